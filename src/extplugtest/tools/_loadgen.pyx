# cython: freethreading_compatible = False
"""Closed-loop CoAP load generator: the hot path of ``extclient benchmark``.

N emulated clients, each with its own connected, non-blocking UDP socket (so its own source
port) and exactly one request outstanding: the next request is sent from the receive path as
soon as the response arrives. One epoll loop does all sending, receiving, matching,
retransmission and latency accounting in C without the GIL, so it runs in a worker thread
while the Python main thread prints progress (see benchmark.py).

Retransmission follows RFC 7252 §4.2 with Californium's defaults: the first timeout is random
in [ACK_TIMEOUT, ACK_TIMEOUT * 1.5], it doubles with every retransmission, and once
MAX_RETRANSMIT retransmissions have timed out the exchange fails (a "transmission error") and
the client goes on with a new request. After an empty ACK, and for NON requests, the client
waits up to the response timeout for the response.

The sockets belong to the caller; the generator only reads, writes and polls them.
"""

from libc.errno cimport errno, EAGAIN, EINTR
from libc.math cimport ceil
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID
from posix.unistd cimport close

from extplugtest.coap._codec cimport (
    parse_view, MessageView, Writer, writer_init, write_header, write_option,
    write_uint_option, write_payload, writer_length, PARSE_OK, CON, NON, ACK, RST,
)

import os
import threading

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void* buffer, size_t length, int flags)
    ssize_t send(int fd, const void* buffer, size_t length, int flags)
    enum: MSG_NOSIGNAL

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum: EPOLLIN, EPOLL_CTL_ADD, EPOLL_CLOEXEC

cdef extern from * nogil:
    """
    /* The stop flag is written by the Python thread and read by the loop thread. */
    static inline int lg_load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void lg_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int lg_msb(unsigned long long v) { return 63 - __builtin_clzll(v); }
    """
    int lg_load(int* p)
    void lg_store(int* p, int value)
    int lg_msb(unsigned long long value)

cdef enum:
    MAX_EVENTS = 512
    DATAGRAM_SIZE = 2048        # Californium's UDP.DATAGRAM_SIZE; larger datagrams are cut
    SCAN_INTERVAL_MS = 10       # timer resolution: how often deadlines are checked
    HALF = 1 << (SUB_BITS - 1)

ACK_TIMEOUT_MS = 2000
MAX_RETRANSMIT = 4
MAX_CLIENTS = 20000


# -- helpers ---------------------------------------------------------------------------------

cdef inline uint64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline uint64_t cpu_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline uint64_t next_random(Engine* e) noexcept nogil:
    # xorshift64*: good enough for timeout jitter and start values, and lock-free.
    cdef uint64_t x = e.rng
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    e.rng = x
    return x * <uint64_t>2685821657736338717


# -- latency histogram -----------------------------------------------------------------------

cdef inline int bucket_of(uint64_t us) noexcept nogil:
    cdef int shift
    if us < (1 << SUB_BITS):
        return <int>us
    if us >= (<uint64_t>1 << MAX_VALUE_BITS):
        us = (<uint64_t>1 << MAX_VALUE_BITS) - 1
    shift = lg_msb(us) - (SUB_BITS - 1)
    return shift * HALF + <int>(us >> shift)


cdef inline uint64_t bucket_upper(int index) noexcept nogil:
    """The largest value that falls into bucket *index*."""
    cdef int shift, mantissa
    if index < (1 << SUB_BITS):
        return <uint64_t>index
    shift = index // HALF - 1
    mantissa = index - shift * HALF
    return ((<uint64_t>mantissa + 1) << shift) - 1


cdef inline void record(Histogram* h, uint64_t us) noexcept nogil:
    h.count += 1
    h.sum_us += us
    if us > h.max_us:
        h.max_us = us
    h.buckets[bucket_of(us)] += 1


cdef uint64_t percentile(const Histogram* h, double q) noexcept nogil:
    """Upper limit of the bucket holding the q-quantile, capped at the maximum (as Californium)."""
    cdef uint64_t rank, seen = 0, upper
    cdef int i
    if h.count == 0:
        return 0
    rank = <uint64_t>ceil(q * <double>h.count)
    if rank < 1:
        rank = 1
    for i in range(BUCKETS):
        seen += h.buckets[i]
        if seen >= rank:
            upper = bucket_upper(i)
            return upper if upper < h.max_us else h.max_us
    return h.max_us


# -- protocol --------------------------------------------------------------------------------

cdef inline void socket_error(Engine* e, Client* c, int err) noexcept nogil:
    e.total.socket_errors += 1
    c.last_error = err
    if e.stop_on_error:
        lg_store(&e.stop, 1)


cdef inline void transmit(Engine* e, Client* c) noexcept nogil:
    # The template is private to this loop: patch MID and token in place and send it.
    cdef uint8_t* m = e.request
    m[2] = c.mid >> 8
    m[3] = c.mid & 0xFF
    m[4] = c.token >> 24
    m[5] = (c.token >> 16) & 0xFF
    m[6] = (c.token >> 8) & 0xFF
    m[7] = c.token & 0xFF
    if send(c.fd, m, e.request_length, MSG_NOSIGNAL) < 0:
        # Lost like a dropped datagram: a CON is retransmitted, a NON times out.
        socket_error(e, c, errno)


cdef inline void send_empty(Engine* e, Client* c, int type, uint16_t mid) noexcept nogil:
    cdef uint8_t message[4]
    cdef Writer w
    writer_init(&w, message, 4)
    write_header(&w, type, 0, mid, NULL, 0)
    if send(c.fd, message, 4, MSG_NOSIGNAL) < 0:
        socket_error(e, c, errno)


cdef inline bint take_request(Engine* e, Client* c) noexcept nogil:
    if e.unlimited:
        return True
    if e.shared:
        if e.shared_remaining == 0:
            return False
        e.shared_remaining -= 1
        return True
    if c.remaining <= 0:
        return False
    c.remaining -= 1
    return True


cdef void start_next(Engine* e, Client* c, uint64_t now) noexcept nogil:
    """Send the client's next request, or retire the client when its budget is spent."""
    if not take_request(e, c):
        c.state = IDLE
        c.deadline_ns = 0
        e.active -= 1
        if not c.started:
            e.pending -= 1
        return
    c.mid = (c.mid + 1) & 0xFFFF
    c.token += 1
    c.sent_ns = now
    c.retransmits = 0
    if e.confirmable:
        c.state = WAIT_ACK
        c.timeout_ns = e.ack_timeout_ns + next_random(e) % (e.ack_timeout_ns // 2 + 1)
        c.deadline_ns = now + c.timeout_ns
    else:
        c.state = WAIT_RESPONSE
        c.deadline_ns = now + e.response_timeout_ns
    e.total.sent += 1
    transmit(e, c)


cdef inline void finish(Engine* e, Client* c, uint64_t now) noexcept nogil:
    if not c.started:
        c.started = True
        e.pending -= 1
    start_next(e, c, now)


cdef inline void complete(Engine* e, Client* c, uint64_t now, int code) noexcept nogil:
    cdef uint64_t us = (now - c.sent_ns) // 1000
    if (code >> 5) == 2:
        e.total.success += 1
        record(&e.success_latency, us)
    else:
        e.total.error_responses += 1
        record(&e.error_latency, us)
    c.last_code = code
    finish(e, c, now)


cdef inline uint32_t token_of(const MessageView* view) noexcept nogil:
    cdef const uint8_t* t = view.token
    return (<uint32_t>t[0] << 24) | (<uint32_t>t[1] << 16) | (<uint32_t>t[2] << 8) | t[3]


cdef void on_datagram(Engine* e, Client* c, uint64_t now,
                      const uint8_t* data, ssize_t length) noexcept nogil:
    cdef MessageView view
    cdef bint matches
    if parse_view(data, length, &view) != PARSE_OK:
        e.total.ignored += 1
        return
    if view.code == 0:
        if view.mid == c.mid and c.state != IDLE:
            if view.type == ACK and c.state == WAIT_ACK:
                # Empty ACK: the server answers separately; stop retransmitting and wait.
                c.state = WAIT_RESPONSE
                c.deadline_ns = now + e.response_timeout_ns
                return
            if view.type == RST:
                e.total.rejects += 1
                c.last_code = -1
                finish(e, c, now)
                return
        if view.type == CON:
            send_empty(e, c, RST, view.mid)     # CoAP ping
        else:
            e.total.ignored += 1
        return
    if view.code < 64:
        # A request (we serve nothing) or a reserved code.
        if view.type == CON:
            send_empty(e, c, RST, view.mid)
        e.total.ignored += 1
        return
    matches = (c.state != IDLE and view.token_length == TOKEN_LENGTH
               and token_of(&view) == c.token)
    if view.type == ACK:
        matches = matches and c.state == WAIT_ACK and view.mid == c.mid
    elif view.type == CON:
        if matches:
            send_empty(e, c, ACK, view.mid)
            c.acked_mid = view.mid
            c.has_acked_mid = True
        elif c.has_acked_mid and view.mid == c.acked_mid:
            # Our ACK of the previous separate response was lost: acknowledge it again.
            send_empty(e, c, ACK, view.mid)
            return
        else:
            send_empty(e, c, RST, view.mid)
    elif view.type == RST:
        matches = False
    if not matches:
        e.total.ignored += 1
        return
    complete(e, c, now, view.code)


cdef void scan_timers(Engine* e, uint64_t now) noexcept nogil:
    cdef Client* c
    cdef int i
    for i in range(e.client_count):
        c = &e.clients[i]
        if c.deadline_ns == 0 or c.deadline_ns > now:
            continue
        if c.state == WAIT_ACK and c.retransmits < e.max_retransmit:
            c.retransmits += 1
            c.timeout_ns *= 2
            c.deadline_ns = now + c.timeout_ns
            e.total.retransmissions += 1
            transmit(e, c)
        else:
            e.total.timeouts += 1
            c.last_code = -2
            finish(e, c, now)


cdef void open_window(Engine* e, uint64_t now) noexcept nogil:
    e.window_base = e.total
    memset(&e.success_latency, 0, sizeof(Histogram))
    memset(&e.error_latency, 0, sizeof(Histogram))
    e.window_start_ns = now
    e.window_cpu_start_ns = cpu_ns()
    e.window_is_open = True


cdef void run_loop(Engine* e) noexcept nogil:
    cdef epoll_event events[MAX_EVENTS]
    cdef uint8_t buffer[DATAGRAM_SIZE]
    cdef uint64_t now = monotonic_ns()
    cdef uint64_t next_scan = now + SCAN_INTERVAL_MS * 1000000
    cdef uint64_t wait_ns
    cdef ssize_t length
    cdef Client* c
    cdef int i, n
    e.started_ns = now
    e.window_is_open = False
    e.window_open_ns = now + e.warmup_ns
    e.end_ns = e.window_open_ns + e.duration_ns if e.duration_ns else UINT64_MAX
    if e.warmup_ns == 0:
        open_window(e, now)
    e.active = e.run_clients
    e.pending = e.run_clients
    for i in range(e.run_clients):
        start_next(e, &e.clients[i], now)
    while e.active > 0 and not lg_load(&e.stop):
        now = monotonic_ns()
        if now >= e.end_ns:
            break
        if not e.window_is_open and now >= e.window_open_ns:
            open_window(e, now)
        if now >= next_scan:
            scan_timers(e, now)
            next_scan = now + SCAN_INTERVAL_MS * 1000000
        wait_ns = next_scan - now if next_scan > now else 0
        n = epoll_wait(e.epfd, events, MAX_EVENTS, <int>((wait_ns + 999999) // 1000000))
        if n < 0:
            if errno == EINTR:
                continue
            e.loop_errno = errno
            break
        for i in range(n):
            c = &e.clients[events[i].data.u32]
            # Level-triggered: read one datagram; if there is another, epoll reports it again.
            length = recv(c.fd, buffer, DATAGRAM_SIZE, 0)
            if length < 0:
                if errno != EAGAIN and errno != EINTR:
                    socket_error(e, c, errno)     # e.g. ECONNREFUSED after ICMP unreachable
                continue
            on_datagram(e, c, monotonic_ns(), buffer, length)
    now = monotonic_ns()
    if not e.window_is_open:
        open_window(e, now)
    e.window_end_ns = now
    e.window_cpu_end_ns = cpu_ns()


# -- Python API ------------------------------------------------------------------------------

def build_request(bint confirmable, int code, options, bytes payload=b"",
                  int mid=0, uint32_t token=0):
    """Serialise a request with a 4-byte token; *options* are (number, bytes) pairs.

    The generator sends this template with MID and token patched in.
    """
    cdef uint8_t buffer[DATAGRAM_SIZE]
    cdef uint8_t token_bytes[TOKEN_LENGTH]
    cdef Writer w
    cdef const uint8_t* value
    cdef bytes encoded
    token_bytes[0] = token >> 24
    token_bytes[1] = (token >> 16) & 0xFF
    token_bytes[2] = (token >> 8) & 0xFF
    token_bytes[3] = token & 0xFF
    writer_init(&w, buffer, DATAGRAM_SIZE)
    write_header(&w, CON if confirmable else NON, code, mid & 0xFFFF, token_bytes, TOKEN_LENGTH)
    for number, option in sorted(options, key=_option_number):
        if isinstance(option, int):
            write_uint_option(&w, number, option)
        else:
            encoded = bytes(option)
            value = encoded
            write_option(&w, number, value, len(encoded))
    if payload:
        value = payload
        write_payload(&w, value, len(payload))
    if w.overflow:
        raise ValueError(f"request does not fit into {DATAGRAM_SIZE} bytes")
    return buffer[:writer_length(&w)]


def _option_number(entry):
    return entry[0]


cdef dict _counters(const Counters* now, const Counters* base):
    return {
        "sent": now.sent - base.sent,
        "retransmissions": now.retransmissions - base.retransmissions,
        "success": now.success - base.success,
        "error_responses": now.error_responses - base.error_responses,
        "timeouts": now.timeouts - base.timeouts,
        "rejects": now.rejects - base.rejects,
        "socket_errors": now.socket_errors - base.socket_errors,
        "ignored": now.ignored - base.ignored,
    }


cdef dict _latency(const Histogram* h):
    """Latency figures in microseconds."""
    return {
        "count": h.count,
        "avg": h.sum_us / <double>h.count if h.count else 0.0,
        "p50": percentile(h, 0.5),
        "p90": percentile(h, 0.9),
        "p95": percentile(h, 0.95),
        "p99": percentile(h, 0.99),
        "p99.9": percentile(h, 0.999),
        "max": h.max_us,
    }


cdef class LoadGenerator:
    """Drives one emulated client per socket in *fds* (connected, non-blocking UDP sockets).

    ``start()`` runs the loop in a worker thread without the GIL; meanwhile ``totals()`` gives
    progress, ``stop()`` ends the run early and ``join()`` waits for its end. ``run()`` does
    all of that in one blocking call.
    """

    def __cinit__(self):
        self.e.epfd = -1

    def __init__(self, fds, *, bint confirmable=True, int code=2, options=(),
                 bytes payload=b"", int ack_timeout_ms=ACK_TIMEOUT_MS,
                 int max_retransmit=MAX_RETRANSMIT, int response_timeout_ms=10000):
        cdef epoll_event event
        cdef int i, fd
        cdef bytes request
        cdef uint64_t seed = int.from_bytes(os.urandom(8), "little") | 1
        if self.e.clients != NULL:
            raise RuntimeError("already initialised")
        fds = list(fds)
        if not 0 < len(fds) <= MAX_CLIENTS:
            raise ValueError(f"number of clients must be in 1..{MAX_CLIENTS}")
        if ack_timeout_ms <= 0 or response_timeout_ms <= 0 or max_retransmit < 0:
            raise ValueError("timeouts must be positive, max_retransmit not negative")
        request = build_request(confirmable, code, options, payload)
        # A private copy: the loop patches MID and token into it in place.
        self.e.request = <uint8_t*>malloc(len(request))
        if self.e.request == NULL:
            raise MemoryError()
        memcpy(self.e.request, <const char*>request, len(request))
        self.e.request_length = len(request)
        self.e.confirmable = confirmable
        self.e.ack_timeout_ns = <uint64_t>ack_timeout_ms * 1000000
        self.e.max_retransmit = max_retransmit
        self.e.response_timeout_ns = <uint64_t>response_timeout_ms * 1000000
        self.e.rng = seed
        self.e.clients = <Client*>calloc(len(fds), sizeof(Client))
        if self.e.clients == NULL:
            raise MemoryError()
        self.e.client_count = len(fds)
        self.e.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.e.epfd < 0:
            raise OSError(errno, os.strerror(errno))
        for i, fd in enumerate(fds):
            self.e.clients[i].fd = fd
            # Random start values, like Californium's USE_RANDOM_MID_START.
            self.e.clients[i].mid = next_random(&self.e) & 0xFFFF
            self.e.clients[i].token = <uint32_t>next_random(&self.e)
            event.events = EPOLLIN
            event.data.u64 = 0
            event.data.u32 = i
            if epoll_ctl(self.e.epfd, EPOLL_CTL_ADD, fd, &event) < 0:
                raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        if self.e.epfd >= 0:
            close(self.e.epfd)
        free(self.e.clients)
        free(self.e.request)

    @property
    def client_count(self) -> int:
        return self.e.client_count

    @property
    def request(self) -> bytes:
        """The request as last sent (or the template, MID 0 and token 0, before a run)."""
        return self.e.request[:self.e.request_length]

    def start(self, int clients=-1, long long requests=0, double duration=0.0,
              double warmup=0.0, bint stop_on_error=False):
        """Start a run of the first *clients* clients (all if -1) in a worker thread.

        *requests* follows Californium's ``--requests``: per client, overall requests x clients;
        up to 10 each client sends exactly that many, above that they share one down-counter
        (fast clients send more); 0: no limit. *duration* (seconds after the *warmup*; 0: no
        limit) ends the run by time. ``window()`` covers the time after the warm-up.
        """
        cdef Engine* e = &self.e
        cdef int i
        if self._thread is not None:
            raise RuntimeError("generator is already running")
        if clients < 0 or clients > e.client_count:
            clients = e.client_count
        if requests <= 0 and duration <= 0:
            raise ValueError("need a request limit or a duration")
        memset(&e.total, 0, sizeof(Counters))
        memset(&e.success_latency, 0, sizeof(Histogram))
        memset(&e.error_latency, 0, sizeof(Histogram))
        e.unlimited = requests <= 0
        e.shared = requests > 10
        e.shared_remaining = <uint64_t>requests * clients if e.shared else 0
        for i in range(e.client_count):
            e.clients[i].remaining = requests if (requests > 0 and not e.shared) else 0
            e.clients[i].state = IDLE
            e.clients[i].deadline_ns = 0
            e.clients[i].started = False
            e.clients[i].last_code = 0
            e.clients[i].last_error = 0
        e.run_clients = clients
        e.warmup_ns = <uint64_t>(warmup * 1e9) if warmup > 0 else 0
        e.duration_ns = <uint64_t>(duration * 1e9) if duration > 0 else 0
        e.stop_on_error = stop_on_error
        e.loop_errno = 0
        # Cleared here, in the caller's thread, so that a stop() right after start() counts.
        lg_store(&e.stop, 0)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, name="loadgen", daemon=True)
        self._thread.start()

    def _work(self):
        try:
            with nogil:
                run_loop(&self.e)
        finally:
            self._done.set()

    def join(self, timeout=None) -> bool:
        """Wait up to *timeout* s for the run to end; True when it has ended."""
        if self._thread is None:
            return True
        # Wait on an Event, not on Thread.join(): a join() interrupted by Ctrl-C can mark a
        # still running thread as stopped (CPython gh-90882), and the results would be read
        # while the loop still writes them.
        if not self._done.wait(timeout):
            return False
        self._thread.join()
        self._thread = None
        if self.e.loop_errno:
            raise OSError(self.e.loop_errno, os.strerror(self.e.loop_errno))
        return True

    def run(self, **limits):
        """start() and wait for the end; Ctrl-C stops the run (and is raised again)."""
        self.start(**limits)
        try:
            while not self.join(0.5):
                pass
        except BaseException:
            self.stop()
            self.join()
            raise

    def stop(self):
        """Ask a running loop to finish (returns at once; the loop ends within ~10 ms)."""
        lg_store(&self.e.stop, 1)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def totals(self) -> dict:
        """Counters since the start of the run, plus active and pending clients.

        Safe to call while the loop runs: each value is read atomically, the set is not
        a consistent snapshot (good enough for progress lines).
        """
        cdef Counters zero
        memset(&zero, 0, sizeof(Counters))
        result = _counters(&self.e.total, &zero)
        result["active"] = self.e.active
        result["pending"] = self.e.pending
        return result

    def window(self) -> dict:
        """Counters, duration, process CPU and latency of the measurement window (after a run)."""
        result = _counters(&self.e.total, &self.e.window_base)
        result["duration"] = (self.e.window_end_ns - self.e.window_start_ns) / 1e9
        result["cpu"] = (self.e.window_cpu_end_ns - self.e.window_cpu_start_ns) / 1e9
        result["success_latency_us"] = _latency(&self.e.success_latency)
        result["error_latency_us"] = _latency(&self.e.error_latency)
        return result

    def client(self, int index) -> dict:
        """State of one client: last response code (-1 RST, -2 timeout), last socket errno."""
        if not 0 <= index < self.e.client_count:
            raise IndexError(index)
        cdef Client* c = &self.e.clients[index]
        return {
            "state": c.state,
            "last_code": c.last_code,
            "last_error": c.last_error,
            "mid": c.mid,
            "token": c.token,
        }

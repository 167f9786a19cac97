"""The forwarding core of ``extnat``: every datagram is handled here, in C.

Forward: a front (listen) socket is drained with recvmmsg; per datagram the NAT entry of the
client address is looked up in a seeded hash table (created on a miss: a new outgoing socket and
a destination), and the datagram leaves on the entry's own socket with one sendto. Sockets of
different entries cannot share a sendmmsg, so this direction costs one system call each.

Backward: all outgoing sockets sit in one edge-triggered epoll set, whose descriptor is
registered with the event loop. When it is readable, the ready sockets are read straight into
the send batch of the front socket that the clients talk to, and that batch leaves with one
sendmmsg.

Nearly all of the NAT's time is the kernel's UDP path (bench/nat_throughput.py); what is left
to user space is a hash lookup and a few counters per datagram.

Python keeps the policy: when entries expire, how destinations age (stale, probing), the
console commands. Fault injection (loss, size limit, delay) is decided here per datagram; a
delayed datagram is handed to the event loop's ``call_later`` through *scheduler*.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from posix.unistd cimport close

from extplugtest._net cimport (
    AF_INET, address_tuple, fill_sockaddr, monotonic_now, sockaddr_in, sockaddr_in6,
    udp_batch_addr, udp_batch_addrlen,
    udp_batch_buffer, udp_batch_free, udp_batch_init, udp_batch_length, udp_batch_queue,
    udp_batch_recv, udp_batch_send, udp_batch_truncated, udp_send_one,
)

cdef extern from *:
    """
    #include <sys/epoll.h>
    #include <netinet/in.h>
    #include <unistd.h>


    /* Receive up to n datagrams into slots first.. of b (the backward path reads straight into
       the send batch of the front socket). Count, 0 when none, -errno on error. */
    static int nat_recv_into(int fd, udp_batch *b, int first, int n)
    {
        for (int i = first; i < first + n; i++) {
            b->iov[i].iov_len = (size_t)b->slot_size;
            b->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
            b->msgs[i].msg_hdr.msg_flags = 0;
            b->msgs[i].msg_hdr.msg_control = NULL;
            b->msgs[i].msg_hdr.msg_controllen = 0;
        }
        int r = recvmmsg(fd, b->msgs + first, (unsigned int)n, MSG_DONTWAIT, NULL);
        if (r < 0)
            return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno;
        return r;
    }

    /* Move the datagram of slot src to slot dst (closing the gap a dropped one left). */
    static inline void nat_move(udp_batch *b, int dst, int src)
    {
        memcpy(b->buffers + (size_t)dst * b->slot_size, b->buffers + (size_t)src * b->slot_size,
               b->msgs[src].msg_len);
        b->msgs[dst].msg_len = b->msgs[src].msg_len;
    }

    /* A new wildcard UDP socket on an ephemeral port: fd (port in *port), or -errno. */
    static int nat_open_udp(int family, uint16_t *port)
    {
        struct sockaddr_storage a;
        socklen_t len = family == AF_INET ? sizeof(struct sockaddr_in)
                                          : sizeof(struct sockaddr_in6);
        int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        memset(&a, 0, sizeof(a));
        a.ss_family = (sa_family_t)family;
        if (bind(fd, (struct sockaddr *)&a, len) < 0
                || getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        *port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port
                                        : ((struct sockaddr_in6 *)&a)->sin6_port);
        return fd;
    }

    /* Edge-triggered: the socket is drained on every report, and an edge does not re-poll
       all sockets reported before (level-triggered costs a second sock_poll each). */
    static inline int nat_epoll_ctl(int epfd, int op, int fd, uint32_t index)
    {
        struct epoll_event ev;
        ev.events = EPOLLIN | EPOLLET;
        ev.data.u64 = 0;
        ev.data.u32 = index;
        return epoll_ctl(epfd, op, fd, &ev);
    }
    static inline int nat_epoll_add(int epfd, int fd, uint32_t index)
    {
        return nat_epoll_ctl(epfd, EPOLL_CTL_ADD, fd, index);
    }
    /* MOD re-evaluates readiness: data still queued is reported again. */
    static inline int nat_epoll_rearm(int epfd, int fd, uint32_t index)
    {
        return nat_epoll_ctl(epfd, EPOLL_CTL_MOD, fd, index);
    }

    /* murmur3's finalizer: keys of a flood must not land in one bucket (seeded per run). */
    static inline uint64_t nat_mix(uint64_t x)
    {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdULL;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53ULL;
        x ^= x >> 33;
        return x;
    }

    static inline uint32_t nat_hash(const void *key, uint64_t seed)
    {
        const unsigned char *k = (const unsigned char *)key;
        uint64_t a, b, c;
        memcpy(&a, k, 8);
        memcpy(&b, k + 8, 8);
        memcpy(&c, k + 16, 8);      /* scope id, port, zero */
        return (uint32_t)nat_mix(nat_mix(nat_mix(seed ^ a) ^ b) ^ c);
    }
    """
    int nat_recv_into(int fd, udp_batch* b, int first, int n) nogil
    void nat_move(udp_batch* b, int dst, int src) nogil
    int nat_open_udp(int family, uint16_t* port) nogil
    int nat_epoll_add(int epfd, int fd, uint32_t index) nogil
    int nat_epoll_rearm(int epfd, int fd, uint32_t index) nogil
    uint32_t nat_hash(const void* key, uint64_t seed) nogil

cdef extern from "<sys/epoll.h>" nogil:
    int epoll_create1(int flags)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum: EPOLL_CLOEXEC

DEF RX_BATCH = 64
DEF TX_BATCH = 128
DEF SLOT_SIZE = 65536         # any UDP datagram fits: nothing is cut (pages are touched lazily)
DEF BACKWARD_BURST = 8        # datagrams read from an outgoing socket per system call
DEF MAX_BURSTS = 8            # calls per socket and report; more is left for the next round
DEF MAX_EVENTS = 256
DEF MAX_ROUNDS = 8            # batches per wake-up, so that the other direction gets its turn

FORWARD = 0
BACKWARD = 1
ACTIVE = DEST_ACTIVE
STALE = DEST_STALE
PROBING = DEST_PROBING
PENDING = DEST_PENDING
REMOVED = DEST_REMOVED
STATE_NAMES = {
    DEST_ACTIVE: "ACTIVE",
    DEST_STALE: "STALE",
    DEST_PROBING: "PROBING",
    DEST_PENDING: "PENDING",
    DEST_REMOVED: "REMOVED",
}
MAX_DESTINATION_SLOTS = MAX_DESTINATIONS
MAX_FRONT_SOCKETS = MAX_FRONTS


# -- addresses -------------------------------------------------------------------------------

cdef void key_from_sockaddr(NatKey* key, const sockaddr_storage* addr) noexcept nogil:
    cdef const sockaddr_in* v4
    cdef const sockaddr_in6* v6
    memset(key, 0, sizeof(NatKey))
    if addr.ss_family == AF_INET:
        v4 = <const sockaddr_in*>addr
        key.address[10] = 0xFF
        key.address[11] = 0xFF
        memcpy(&key.address[12], &v4.sin_addr, 4)
        key.port = v4.sin_port
    else:
        v6 = <const sockaddr_in6*>addr
        memcpy(key.address, &v6.sin6_addr, 16)
        key.port = v6.sin6_port
        key.scope_id = v6.sin6_scope_id


cdef inline bint same_key(const NatKey* a, const NatKey* b) noexcept nogil:
    return memcmp(a, b, sizeof(NatKey)) == 0


cdef inline bint is_dtls_record(const uint8_t* data, Py_ssize_t length) noexcept nogil:
    # Californium's -x filter: a DTLS 1.2 record of a known content type, or a DTLS 1.0
    # handshake record (HelloVerifyRequest).
    if length < 14 or data[1] != 0xFE:
        return False
    if data[2] == 0xFD:
        return data[0] == 20 or data[0] == 21 or data[0] == 22 or data[0] == 23 or data[0] == 25
    return data[2] == 0xFF and data[0] == 22


cdef uint64_t chance_threshold(double percent) except? 0:
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percentage out of range 0..100: {percent}")
    return <uint64_t>(percent / 100.0 * 4294967296.0)


# -- the forwarder ---------------------------------------------------------------------------

cdef class Forwarder:
    """NAT table, destinations and the batched forwarding of both directions.

    *scheduler(delay, callback, *args)* runs a delayed datagram later (the event loop's
    ``call_later``); it is only used when a delay is configured. At most *max_delayed*
    datagrams wait at a time, more are dropped and counted.
    """

    def __cinit__(self, int max_entries, scheduler=None, int max_delayed=10000):
        cdef uint32_t buckets = 16, b
        cdef int i
        self.epoll_fd = -1                      # before anything can fail: __dealloc__ closes it
        if max_entries < 1 or max_entries > 1 << 24:
            raise ValueError("max_entries must be 1..16777216")
        self.max_entries = max_entries
        self.max_delayed = max_delayed
        self.scheduler = scheduler
        while buckets < <uint32_t>max_entries * 2:
            buckets <<= 1
        self.bucket_mask = buckets - 1
        self.entries = <Entry*>calloc(max_entries, sizeof(Entry))
        self.buckets = <int32_t*>calloc(buckets, sizeof(int32_t))
        self.events = <epoll_event*>calloc(MAX_EVENTS, sizeof(epoll_event))
        if self.entries == NULL or self.buckets == NULL or self.events == NULL:
            raise MemoryError()
        if udp_batch_init(&self.rx, RX_BATCH, SLOT_SIZE):
            raise MemoryError()
        for b in range(buckets):
            self.buckets[b] = -1
        for i in range(max_entries):            # free list in slot order
            self.entries[i].fd = -1
            self.entries[i].next = i + 1 if i + 1 < max_entries else -1
        self.free_head = 0
        seed = os.urandom(16)
        self.hash_seed = int.from_bytes(seed[:8], "little")
        self.rng = int.from_bytes(seed[8:], "little") | 1
        self.epoll_fd = epoll_create1(EPOLL_CLOEXEC)
        if self.epoll_fd < 0:
            raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        self._close_all()
        udp_batch_free(&self.rx)
        free(self.entries)
        free(self.buckets)
        free(self.events)

    cdef void _close_all(self) noexcept:
        cdef int i
        if self.entries != NULL:
            for i in range(self.max_entries):
                if self.entries[i].fd >= 0:
                    self._close(i)
        for i in range(self.front_count):
            udp_batch_free(&self.tx[i])
        self.front_count = 0
        if self.epoll_fd >= 0:
            close(self.epoll_fd)
            self.epoll_fd = -1

    def close(self):
        """Close all outgoing sockets and the epoll set (the front sockets belong to Python)."""
        cdef int i
        if not self.closed:
            for i in range(self.front_count):
                self._flush(i)
            self.closed = True
            self._close_all()

    # -- setup -----------------------------------------------------------------------------
    def add_front(self, int fd) -> int:
        """Register a bound, non-blocking front socket; returns its index for on_readable."""
        if self.front_count == MAX_FRONTS:
            raise ValueError(f"at most {MAX_FRONTS} listen addresses")
        if udp_batch_init(&self.tx[self.front_count], TX_BATCH, SLOT_SIZE):
            raise MemoryError()
        self.front_fds[self.front_count] = fd
        self.front_count += 1
        return self.front_count - 1

    def set_faults(self, int direction, double loss=0.0, Py_ssize_t max_size=0,
                   double size_percent=100.0, double delay=0.0, double jitter=0.0,
                   double delay_percent=100.0):
        """Fault injection for FORWARD or BACKWARD datagrams; percentages 0..100, seconds."""
        cdef Faults f
        if direction != FORWARD and direction != BACKWARD:
            raise ValueError("direction must be FORWARD or BACKWARD")
        if max_size < 0 or delay < 0 or jitter < 0:
            raise ValueError("size, delay and jitter must not be negative")
        f.loss = chance_threshold(loss)
        f.max_size = max_size
        f.size_chance = chance_threshold(size_percent)
        f.delay = delay
        f.jitter = jitter
        f.delay_chance = chance_threshold(delay_percent)
        self.faults[direction] = f

    # -- destinations ----------------------------------------------------------------------
    def add_destination(self, address) -> int:
        """Add a destination (address tuple): its slot, or -1 if it is a destination already."""
        cdef sockaddr_storage addr
        cdef uint32_t addrlen = fill_sockaddr(&addr, address)
        cdef NatKey key
        cdef int i, slot = -1
        key_from_sockaddr(&key, &addr)
        if self._find_destination(&key) >= 0:
            return -1
        for i in range(MAX_DESTINATIONS):
            if self.dests[i].state == DEST_FREE:
                slot = i
                break
        if slot < 0:
            raise ValueError(f"at most {MAX_DESTINATIONS} destinations")
        memset(&self.dests[slot], 0, sizeof(Dest))
        memcpy(&self.dests[slot].addr, &addr, addrlen)
        self.dests[slot].addrlen = addrlen
        self.dests[slot].key = key
        self.dests[slot].state = DEST_ACTIVE
        self.dests[slot].since = monotonic_now()
        self._rebuild_active()
        return slot

    def find_destination(self, address) -> int:
        """Slot of a destination that is not removed, or -1."""
        cdef sockaddr_storage addr
        cdef NatKey key
        fill_sockaddr(&addr, address)
        key_from_sockaddr(&key, &addr)
        return self._find_destination(&key)

    def remove_destination(self, int slot):
        """Entries that still point at it move to another destination with their next forward."""
        self._check_slot(slot)
        self.dests[slot].state = DEST_REMOVED
        if self.dests[slot].usage == 0:
            self.dests[slot].state = DEST_FREE
        self._rebuild_active()

    def set_destination_state(self, int slot, int state):
        """The health check's transitions (ACTIVE, STALE, PROBING, PENDING)."""
        self._check_slot(slot)
        if state < DEST_ACTIVE or state > DEST_PENDING:
            raise ValueError(f"bad destination state {state}")
        self.dests[slot].state = state
        self.dests[slot].since = monotonic_now()
        self.dests[slot].send_since = 0.0
        self._rebuild_active()

    def destination(self, int slot) -> tuple:
        """(state, usage, seconds unanswered or -1, seconds in this state) of a slot."""
        cdef Dest* d = &self.dests[self._check_slot(slot)]
        cdef double now = monotonic_now()
        unanswered = now - d.send_since if d.send_since > 0 else -1.0
        return (d.state, d.usage, unanswered, now - d.since)

    def destination_slots(self) -> list:
        """Slots in use (not free), removed ones included while entries point at them."""
        return [i for i in range(MAX_DESTINATIONS) if self.dests[i].state != DEST_FREE]

    cdef int _check_slot(self, int slot) except -1:
        if slot < 0 or slot >= MAX_DESTINATIONS or self.dests[slot].state == DEST_FREE:
            raise ValueError(f"no destination in slot {slot}")
        return slot

    # -- entries ---------------------------------------------------------------------------
    def entry_list(self) -> list:
        """(client address, outgoing local port, destination slot) of every entry."""
        cdef int i
        result = []
        for i in range(self.max_entries):
            if self.entries[i].fd >= 0:
                result.append((address_tuple(&self.entries[i].client),
                               self.entries[i].local_port, self.entries[i].dest))
        return result

    def entry(self, address):
        """(outgoing local port, destination slot) of the entry for a client, or None."""
        cdef sockaddr_storage addr
        cdef NatKey key
        cdef int32_t index
        fill_sockaddr(&addr, address)
        key_from_sockaddr(&key, &addr)
        index = self._lookup(&key)
        if index < 0:
            return None
        return (self.entries[index].local_port, self.entries[index].dest)

    def expire(self, double idle) -> int:
        """Close the entries without traffic for *idle* seconds; returns how many."""
        cdef double limit = monotonic_now() - idle
        cdef int i, n = 0
        for i in range(self.max_entries):
            if self.entries[i].fd >= 0 and self.entries[i].used < limit:
                self._close(i)
                n += 1
        self.c.entries_expired += n
        return n

    def clear(self, int limit=-1) -> int:
        """Close *limit* entries (all when negative), in table order; returns how many."""
        cdef int i, n = 0
        for i in range(self.max_entries):
            if limit >= 0 and n >= limit:
                break
            if self.entries[i].fd >= 0:
                self._close(i)
                n += 1
        return n

    def reassign(self) -> tuple:
        """A new outgoing socket (new local port) for every entry, as a NAT rebinding does.

        Returns (reassigned, failed); an entry whose new socket fails keeps its old one."""
        cdef int i, fd, n = 0, failed = 0
        cdef uint16_t port
        for i in range(self.max_entries):
            if self.entries[i].fd < 0:
                continue
            fd = self._open_outgoing(self.entries[i].family, i, &port)
            if fd < 0:
                failed += 1
                continue
            close(self.entries[i].fd)
            self.entries[i].fd = fd
            self.entries[i].local_port = port
            n += 1
        return (n, failed)

    def rebalance(self) -> int:
        """A new random destination for every entry; returns how many changed."""
        cdef int i, d, n = 0
        for i in range(self.max_entries):
            if self.entries[i].fd < 0:
                continue
            d = self._choose()
            if d >= 0 and d != self.entries[i].dest and self._assign(i, d) == 0:
                n += 1
        return n

    # -- statistics ------------------------------------------------------------------------
    def counters(self) -> dict:
        return {
            "forward-received": self.c.forward_received,
            "forwarded": self.c.forwarded,
            "forward-send-errors": self.c.forward_send_errors,
            "forward-dropped-loss": self.c.forward_dropped_loss,
            "forward-dropped-size": self.c.forward_dropped_size,
            "forward-dropped-filter": self.c.forward_dropped_filter,
            "forward-dropped-table-full": self.c.forward_dropped_table_full,
            "forward-dropped-no-destination": self.c.forward_dropped_no_destination,
            "forward-delayed": self.c.forward_delayed,
            "forward-truncated": self.c.forward_truncated,
            "backward-received": self.c.backward_received,
            "backwarded": self.c.backwarded,
            "backward-send-errors": self.c.backward_send_errors,
            "backward-dropped-loss": self.c.backward_dropped_loss,
            "backward-dropped-size": self.c.backward_dropped_size,
            "backward-delayed": self.c.backward_delayed,
            "wrong-routed": self.c.wrong_routed,
            "wrong-routed-dropped": self.c.wrong_routed_dropped,
            "reverse-updates": self.c.reverse_updates,
            "delayed-dropped": self.c.delayed_dropped,
            "receive-errors": self.c.recv_errors,
            "entries-created": self.c.entries_created,
            "entries-expired": self.c.entries_expired,
            "entries-closed": self.c.entries_closed,
            "entry-socket-errors": self.c.entry_socket_errors,
            "failovers": self.c.failovers,
            "destinations-revived": self.c.destinations_revived,
        }

    # -- event loop callbacks --------------------------------------------------------------
    def on_front_readable(self, int front):
        """Forward what a front socket holds (bounded per call)."""
        cdef int n, i, _rounds
        if self.closed:
            return
        for _rounds in range(MAX_ROUNDS):
            n = udp_batch_recv(self.front_fds[front], &self.rx)
            if n <= 0:
                if n < 0:
                    self.c.recv_errors += 1
                break
            self.now = monotonic_now()
            for i in range(n):
                self._forward(front, i)
            if n < RX_BATCH:
                break

    def on_backward_readable(self):
        """Pass back what the ready outgoing sockets hold (bounded per call)."""
        cdef int n, k, i, _rounds
        if self.closed:
            return
        for _rounds in range(MAX_ROUNDS):
            n = epoll_wait(self.epoll_fd, self.events, MAX_EVENTS, 0)
            if n <= 0:
                break
            self.now = monotonic_now()
            for k in range(n):
                self._backward(<int32_t>self.events[k].data.u32)
            if n < MAX_EVENTS:
                break
        for i in range(self.front_count):
            self._flush(i)

    def deliver_forward(self, bytes client, bytes data):
        """A delayed forward datagram is due: send it, if its entry still exists."""
        cdef sockaddr_storage addr
        cdef NatKey key
        cdef int32_t index
        cdef Entry* e
        self.waiting -= 1
        if self.closed:
            return
        memset(&addr, 0, sizeof(addr))
        memcpy(&addr, PyBytes_AS_STRING(client), PyBytes_GET_SIZE(client))
        key_from_sockaddr(&key, &addr)
        index = self._lookup(&key)
        if index < 0:
            self.c.delayed_dropped += 1
            return
        e = &self.entries[index]
        if udp_send_one(e.fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                        &self.dests[e.dest].addr, self.dests[e.dest].addrlen) < 0:
            self.c.forward_send_errors += 1
        else:
            self.c.forwarded += 1
            if self.dests[e.dest].send_since == 0.0:
                self.dests[e.dest].send_since = monotonic_now()

    def deliver_backward(self, int front, bytes client, bytes data):
        """A delayed backward datagram is due: send it to the client from its front socket."""
        cdef sockaddr_storage addr
        self.waiting -= 1
        if self.closed:
            return
        memset(&addr, 0, sizeof(addr))
        memcpy(&addr, PyBytes_AS_STRING(client), PyBytes_GET_SIZE(client))
        if udp_send_one(self.front_fds[front], PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                        &addr, PyBytes_GET_SIZE(client)) < 0:
            self.c.backward_send_errors += 1
        else:
            self.c.backwarded += 1

    # -- per datagram ----------------------------------------------------------------------
    cdef int _forward(self, int front, int slot) except -1:
        cdef const uint8_t* data = udp_batch_buffer(&self.rx, slot)
        cdef Py_ssize_t length = udp_batch_length(&self.rx, slot)
        cdef sockaddr_storage* source = udp_batch_addr(&self.rx, slot)
        cdef Faults* f = &self.faults[FORWARD]
        cdef NatKey key
        cdef int32_t index
        cdef Entry* e
        cdef Dest* d
        cdef int dest
        self.c.forward_received += 1
        if udp_batch_truncated(&self.rx, slot):
            self.c.forward_truncated += 1
            return 0
        if self.dtls_filter and not is_dtls_record(data, length):
            self.c.forward_dropped_filter += 1
            return 0
        key_from_sockaddr(&key, source)
        index = self._lookup(&key)
        if index < 0:
            if self.count >= self.max_entries:
                self.c.forward_dropped_table_full += 1
                return 0
            dest = self._choose()
            if dest < 0:
                self.c.forward_dropped_no_destination += 1
                return 0
            index = self._create(&key, source, udp_batch_addrlen(&self.rx, slot), front, dest)
            if index < 0:
                return 0
        e = &self.entries[index]
        e.used = self.now
        # Fail-over (as Californium): an entry whose destination went stale or was removed
        # moves to another one, except for the first datagram after an assignment (a probe).
        if self.dests[e.dest].state == DEST_REMOVED or (
                not e.first and self.dests[e.dest].state != DEST_ACTIVE):
            dest = self._choose()
            if dest < 0:
                self.c.forward_dropped_no_destination += 1
                return 0
            if dest != e.dest:
                if self._assign(index, dest) < 0:
                    return 0
                self.c.failovers += 1
        e.first = False
        if f.loss and self._chance(f.loss):
            self.c.forward_dropped_loss += 1
            return 0
        if f.max_size and length > f.max_size and self._chance(f.size_chance):
            self.c.forward_dropped_size += 1
            return 0
        d = &self.dests[e.dest]
        if (f.delay > 0 or f.jitter > 0) and self._chance(f.delay_chance):
            self.c.forward_delayed += 1
            return self._schedule(FORWARD, data, length, front, source,
                                  udp_batch_addrlen(&self.rx, slot))
        if udp_send_one(e.fd, data, length, &d.addr, d.addrlen) < 0:
            self.c.forward_send_errors += 1
            return 0
        self.c.forwarded += 1
        if d.send_since == 0.0:                 # the load-balancer timer starts
            d.send_since = self.now
        return 0

    cdef int _backward(self, int32_t index) except -1:
        """Drain an outgoing socket (edge-triggered: all of it, or re-arm for the rest)."""
        cdef Entry* e = &self.entries[index]
        cdef udp_batch* tx
        cdef int m, j, start, _bursts
        for _bursts in range(MAX_BURSTS):
            if e.fd < 0:
                return 0
            tx = &self.tx[e.front]
            if tx.capacity - tx.count < BACKWARD_BURST:
                self._flush(e.front)
            start = tx.count
            m = nat_recv_into(e.fd, tx, start, BACKWARD_BURST)
            if m < 0:
                self.c.recv_errors += 1         # a pending socket error; the data follows
                continue
            for j in range(m):
                self._backward_one(index, start + j)
            if m < BACKWARD_BURST:
                return 0
        # More than MAX_BURSTS * BACKWARD_BURST waiting: leave the rest for the next round,
        # re-arming the edge so that epoll reports the socket again.
        if e.fd >= 0:
            nat_epoll_rearm(self.epoll_fd, e.fd, <uint32_t>index)
        return 0

    cdef int _backward_one(self, int32_t index, int slot) except -1:
        cdef Entry* e = &self.entries[index]
        cdef udp_batch* tx = &self.tx[e.front]
        cdef Faults* f = &self.faults[BACKWARD]
        cdef Py_ssize_t length = udp_batch_length(tx, slot)
        cdef NatKey key
        cdef int dest
        self.c.backward_received += 1
        key_from_sockaddr(&key, udp_batch_addr(tx, slot))
        if same_key(&key, &self.dests[e.dest].key):
            self._answered(e.dest)
        else:
            # An answer from another node than the entry's destination (a cluster without
            # backward forwarding). With -r the entry follows it; otherwise, or if the
            # source is no destination at all, the datagram is dropped.
            self.c.wrong_routed += 1
            dest = self._find_destination(&key) if self.reverse else -1
            if dest < 0 or self._assign(index, dest) < 0:
                self.c.wrong_routed_dropped += 1
                return 0
            e.first = False
            self.c.reverse_updates += 1
            self._answered(dest)
        e.used = self.now
        if f.loss and self._chance(f.loss):
            self.c.backward_dropped_loss += 1
            return 0
        if f.max_size and length > f.max_size and self._chance(f.size_chance):
            self.c.backward_dropped_size += 1
            return 0
        if (f.delay > 0 or f.jitter > 0) and self._chance(f.delay_chance):
            self.c.backward_delayed += 1
            return self._schedule(BACKWARD, udp_batch_buffer(tx, slot), length, e.front,
                                  &e.client, e.client_len)
        if slot != tx.count:                    # close the gap of a dropped datagram
            nat_move(tx, tx.count, slot)
        udp_batch_queue(tx, length, &e.client, e.client_len)
        self.c.backwarded += 1
        return 0

    cdef int _schedule(self, int direction, const uint8_t* data, Py_ssize_t length,
                       int front, const sockaddr_storage* addr, uint32_t addrlen) except -1:
        cdef Faults* f = &self.faults[direction]
        cdef double delay = f.delay
        if self.scheduler is None or self.waiting >= self.max_delayed:
            self.c.delayed_dropped += 1
            return 0
        if f.jitter > 0:
            delay += f.jitter * <double>(self._random() >> 11) / 9007199254740992.0
        payload = PyBytes_FromStringAndSize(<const char*>data, length)
        client = PyBytes_FromStringAndSize(<const char*>addr, addrlen)
        try:
            if direction == FORWARD:
                self.scheduler(delay, self.deliver_forward, client, payload)
            else:
                self.scheduler(delay, self.deliver_backward, front, client, payload)
        except Exception:
            self.c.delayed_dropped += 1
            return 0
        self.waiting += 1
        return 0

    cdef void _flush(self, int front) noexcept:
        cdef int failed
        if self.tx[front].count:
            failed = udp_batch_send(self.front_fds[front], &self.tx[front])
            self.c.backward_send_errors += failed
            self.c.backwarded -= failed

    # -- table -----------------------------------------------------------------------------
    cdef uint64_t _random(self) noexcept:
        # xorshift64*: cheap, and good enough for drops, jitter and the destination choice.
        cdef uint64_t x = self.rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self.rng = x
        return x * <uint64_t>2685821657736338717

    cdef bint _chance(self, uint64_t threshold) noexcept:
        return (self._random() >> 32) < threshold

    cdef int32_t _lookup(self, const NatKey* key) noexcept:
        cdef int32_t i = self.buckets[nat_hash(key, self.hash_seed) & self.bucket_mask]
        while i >= 0:
            if same_key(&self.entries[i].key, key):
                return i
            i = self.entries[i].next
        return -1

    cdef int32_t _create(self, const NatKey* key, const sockaddr_storage* client,
                         uint32_t client_len, int front, int dest) noexcept:
        cdef int32_t index = self.free_head
        cdef Entry* e = &self.entries[index]
        cdef uint32_t bucket
        cdef uint16_t port
        cdef int fd = self._open_outgoing(self.dests[dest].addr.ss_family, index, &port)
        if fd < 0:
            return -1
        self.free_head = e.next
        memcpy(&e.key, key, sizeof(NatKey))
        memcpy(&e.client, client, client_len)
        e.client_len = client_len
        e.fd = fd
        e.family = self.dests[dest].addr.ss_family
        e.local_port = port
        e.front = front
        e.dest = dest
        e.first = True
        e.used = self.now
        self.dests[dest].usage += 1
        bucket = nat_hash(key, self.hash_seed) & self.bucket_mask
        e.next = self.buckets[bucket]
        self.buckets[bucket] = index
        self.count += 1
        self.c.entries_created += 1
        return index

    cdef void _close(self, int32_t index) noexcept:
        cdef Entry* e = &self.entries[index]
        cdef uint32_t bucket = nat_hash(&e.key, self.hash_seed) & self.bucket_mask
        cdef int32_t* link = &self.buckets[bucket]
        while link[0] >= 0 and link[0] != index:
            link = &self.entries[link[0]].next
        if link[0] == index:
            link[0] = e.next
        close(e.fd)                             # also leaves the epoll set
        e.fd = -1
        self._unuse(e.dest)
        e.next = self.free_head
        self.free_head = index
        self.count -= 1
        self.c.entries_closed += 1

    cdef int _open_outgoing(self, int family, int32_t index, uint16_t* port) noexcept:
        cdef int fd = nat_open_udp(family, port)
        if fd >= 0 and nat_epoll_add(self.epoll_fd, fd, <uint32_t>index) < 0:
            close(fd)
            fd = -1
        if fd < 0:
            self.c.entry_socket_errors += 1
        return fd

    cdef int _assign(self, int32_t index, int dest) noexcept:
        """Point an entry at another destination; a new socket if the address family differs."""
        cdef Entry* e = &self.entries[index]
        cdef int family = self.dests[dest].addr.ss_family
        cdef int fd
        cdef uint16_t port
        if family != e.family:
            fd = self._open_outgoing(family, index, &port)
            if fd < 0:
                return -1
            close(e.fd)
            e.fd = fd
            e.family = family
            e.local_port = port
        self._unuse(e.dest)
        e.dest = dest
        e.first = True
        self.dests[dest].usage += 1
        return 0

    cdef int _choose(self) noexcept:
        """A destination for an entry: a probing one first (it becomes pending), else random."""
        cdef int i
        for i in range(MAX_DESTINATIONS):
            if self.dests[i].state == DEST_PROBING:
                self.dests[i].state = DEST_PENDING
                self.dests[i].since = monotonic_now()
                self.dests[i].send_since = 0.0
                return i
        if self.active_count == 0:
            return -1
        if self.active_count == 1:
            return self.active[0]
        return self.active[(self._random() >> 32) % <uint64_t>self.active_count]

    cdef void _rebuild_active(self) noexcept:
        cdef int i
        self.active_count = 0
        for i in range(MAX_DESTINATIONS):
            if self.dests[i].state == DEST_ACTIVE:
                self.active[self.active_count] = i
                self.active_count += 1

    cdef void _unuse(self, int dest) noexcept:
        self.dests[dest].usage -= 1
        if self.dests[dest].usage == 0 and self.dests[dest].state == DEST_REMOVED:
            self.dests[dest].state = DEST_FREE

    cdef void _answered(self, int dest) noexcept:
        # Any answer proves the destination alive (Californium's updateReceive).
        cdef Dest* d = &self.dests[dest]
        d.send_since = 0.0
        if d.state == DEST_STALE or d.state == DEST_PROBING or d.state == DEST_PENDING:
            d.state = DEST_ACTIVE
            d.since = self.now
            self.c.destinations_revived += 1
            self._rebuild_active()

    cdef int _find_destination(self, const NatKey* key) noexcept:
        cdef int i
        for i in range(MAX_DESTINATIONS):
            if (self.dests[i].state != DEST_FREE and self.dests[i].state != DEST_REMOVED
                    and same_key(&self.dests[i].key, key)):
                return i
        return -1

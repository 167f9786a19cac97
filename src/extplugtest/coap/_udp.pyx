"""The UDP engine: one Python->C crossing per batch of datagrams.

``UdpEngine.on_readable`` is registered with the event loop's ``add_reader``. It drains the
socket with recvmmsg, and for every datagram runs the CoAP message layer in C: parse, reject
malformed messages (RFC 7252 §4.2/§4.3), answer pings, deduplicate by (peer, MID) (§4.5),
answer bad options (§5.4.1) and proxy requests (§5.7.2), and hand the request either to a
FastResource (no Python objects at all) or to the Python endpoint. Responses are queued and
leave with one sendmmsg per batch.
"""

import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memcpy, memset, strlen

from extplugtest.coap._codec cimport (
    ACK, CON, NON, RST, MessageView, Message, PARSE_FORMAT_ERROR, PARSE_IGNORE,
    PROBLEM_BAD_CRITICAL, PROBLEM_PROXY, Writer, message_from_view, parse_view, write_header,
    write_payload, writer_init, writer_length,
)
from extplugtest.coap._dedup cimport (
    DeduplicationCache, Exchange, Peer, PeerKey, SLOT_ANSWERED,
)

from extplugtest._net cimport (
    AF_INET, address_tuple, fill_sockaddr, monotonic_now, ntohs, sockaddr_in,
    sockaddr_in6, sockaddr_storage, udp_batch_addr, udp_batch_addrlen, udp_batch_buffer,
    udp_batch_free, udp_batch_init, udp_batch_length, udp_batch_queue,
    udp_batch_recv, udp_batch_send, udp_batch_truncated,
    udp_send_one,
)

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char* buf, int num)

from extplugtest._openssl_init cimport extplugtest_openssl_init

extplugtest_openssl_init()  # before any other libcrypto call (csrc/openssl_init.h)

logger = logging.getLogger("extplugtest.coap.udp")

cdef enum:
    CODE_EMPTY = 0
    CODE_BAD_OPTION = 0x82          # 4.02
    CODE_INTERNAL_ERROR = 0xA0      # 5.00
    CODE_PROXYING_NOT_SUPPORTED = 0xA5  # 5.05


cdef class FastResource:
    cdef Py_ssize_t respond(self, const MessageView* request, Writer* out, int response_type,
                            uint16_t response_mid, Py_ssize_t max_payload) noexcept:
        return 0


cdef int peer_key_from_sockaddr(PeerKey* key, const sockaddr_storage* addr) noexcept nogil:
    """The fixed-size key of a peer address (IPv4 as IPv4-mapped IPv6), zero padded."""
    cdef const sockaddr_in* v4
    cdef const sockaddr_in6* v6
    memset(key, 0, sizeof(PeerKey))
    if addr.ss_family == AF_INET:
        v4 = <const sockaddr_in*>addr
        key.address[10] = 0xFF
        key.address[11] = 0xFF
        memcpy(&key.address[12], &v4.sin_addr, 4)
        key.port = ntohs(v4.sin_port)
    else:
        v6 = <const sockaddr_in6*>addr
        memcpy(key.address, &v6.sin6_addr, 16)
        key.port = ntohs(v6.sin6_port)
        key.scope_id = v6.sin6_scope_id
    return 0


cdef class UdpEngine:
    """The per-socket datagram engine.

    *endpoint* is the Python message layer; the engine calls
    ``endpoint.on_request(message, address)`` (returns a response Message to send now, or None
    when the response is deferred: a CON then gets an empty ACK), ``endpoint.on_empty(type, mid,
    address)`` for ACK/RST and ``endpoint.on_response(message, address)`` for responses.
    """

    def __cinit__(self, int fd, int family, endpoint, DeduplicationCache dedup=None,
                  FastResource fast=None, Py_ssize_t max_message_size=1024):
        self.fd = fd
        self.family = family
        self.endpoint = endpoint
        self.dedup = dedup
        self.fast = fast
        self.max_batches = MAX_BATCHES
        self.max_message_size = max_message_size
        self.current = NULL
        memset(&self.c, 0, sizeof(EngineCounters))
        if udp_batch_init(&self.rx, RX_BATCH, SLOT_SIZE):
            raise MemoryError()
        if udp_batch_init(&self.tx, TX_BATCH, SLOT_SIZE):
            raise MemoryError()
        RAND_bytes(<unsigned char*>&self.mid, sizeof(self.mid))   # §4.4: random MID start

    def __dealloc__(self):
        udp_batch_free(&self.rx)
        udp_batch_free(&self.tx)

    # -- Python API -------------------------------------------------------------------------
    def on_readable(self):
        """Drain the socket (bounded per call) and answer what can be answered."""
        cdef int n, i, rounds = 0
        while rounds < self.max_batches:
            n = udp_batch_recv(self.fd, &self.rx)
            if n < 0:
                self.c.recv_errors += 1
                break
            if n == 0:
                break
            self.now = monotonic_now()
            for i in range(n):
                try:
                    self._receive(i)
                except Exception:
                    self.c.handler_errors += 1
                    logger.exception("datagram processing failed")
                self.current = NULL
            self._flush()
            rounds += 1
            if n < RX_BATCH:
                break

    def next_mid(self) -> int:
        self.mid += 1
        return self.mid

    def send(self, data, address) -> bool:
        """Send one datagram now (separate responses, notifications, retransmissions)."""
        cdef sockaddr_storage addr
        cdef const uint8_t[:] raw = data
        cdef unsigned int addrlen = fill_sockaddr(&addr, address)
        if udp_send_one(self.fd, &raw[0], raw.shape[0], &addr, addrlen) < 0:
            self.c.send_errors += 1
            return False
        return True

    def update_cached_response(self, address, int mid, data) -> bool:
        """A deferred response is ready: duplicates of request *mid* now get *data*."""
        if self.dedup is None:
            return False
        return self.dedup.update_response(address, mid, data, monotonic_now())

    def count(self, str name, int amount=1):
        """Let the Python message layer add to the shared counters."""
        if name == "send-responses":
            self.c.send_responses += amount
        elif name == "send-acks":
            self.c.send_acks += amount
        elif name == "send-rejects":
            self.c.send_rejects += amount
        elif name == "recv-ignored":
            self.c.recv_ignored += amount
        else:
            raise KeyError(name)

    def counters(self) -> dict:
        """Counters with Californium's health-statistic names where one exists."""
        return {
            "recv-requests": self.c.recv_requests,
            "recv-duplicate requests": self.c.recv_duplicate_requests,
            "recv-responses": self.c.recv_responses,
            "recv-acks": self.c.recv_acks,
            "recv-rejects": self.c.recv_rejects,
            "recv-pings": self.c.recv_pings,
            "recv-ignored": self.c.recv_ignored,
            "recv-malformed": self.c.recv_malformed,
            "recv-truncated": self.c.recv_truncated,
            "recv-errors": self.c.recv_errors,
            "send-responses": self.c.send_responses,
            "send-acks": self.c.send_acks,
            "send-rejects": self.c.send_rejects,
            "send-errors": self.c.send_errors,
            "fast-path": self.c.fast_path,
            "slow-path": self.c.slow_path,
            "handler-errors": self.c.handler_errors,
        }

    # -- per datagram -----------------------------------------------------------------------
    cdef int _receive(self, int slot) except -1:
        """A received datagram in rx *slot*: here a CoAP message as it is."""
        return self._process(slot)

    cdef int _process(self, int slot) except -1:
        cdef const uint8_t* data = udp_batch_buffer(&self.rx, slot)
        cdef Py_ssize_t length = udp_batch_length(&self.rx, slot)
        cdef MessageView view
        cdef int result, code_class
        cdef PeerKey key
        cdef Peer* peer
        cdef Exchange* ex
        cdef uint8_t* out
        cdef Writer w
        cdef Py_ssize_t n
        cdef int response_type
        cdef uint16_t response_mid

        if udp_batch_truncated(&self.rx, slot):
            self.c.recv_truncated += 1          # larger than UDP.DATAGRAM_SIZE: dropped
            return 0
        result = parse_view(data, length, &view)
        if result == PARSE_IGNORE:
            self.c.recv_ignored += 1
            return 0
        if result == PARSE_FORMAT_ERROR:
            self.c.recv_malformed += 1
            if view.type == CON:                # §4.2: reject a malformed CON with RST
                self._reply_empty(slot, RST, view.mid)
            return 0

        code_class = view.code >> 5
        if view.code == CODE_EMPTY:
            if view.type == CON:                # ping (§4.3)
                self.c.recv_pings += 1
                self._reply_empty(slot, RST, view.mid)
            elif view.type == ACK or view.type == RST:
                if view.type == ACK:
                    self.c.recv_acks += 1
                else:
                    self.c.recv_rejects += 1
                self.endpoint.on_empty(view.type, view.mid,
                                       address_tuple(udp_batch_addr(&self.rx, slot)))
            else:
                self.c.recv_ignored += 1        # an empty NON means nothing
            return 0

        if code_class == 0:                     # a request
            if view.type == ACK or view.type == RST:
                self.c.recv_malformed += 1      # only CON/NON carry requests: drop (§4.2)
                return 0
            self.c.recv_requests += 1
            if self.dedup is not None:
                peer_key_from_sockaddr(&key, udp_batch_addr(&self.rx, slot))
                peer = self.dedup.peer(&key, self.now)
                if peer != NULL:
                    ex = self.dedup.find(peer, view.mid, self.now)
                    if ex != NULL:
                        self.c.recv_duplicate_requests += 1
                        if ex.state == SLOT_ANSWERED and ex.response_length:
                            self._resend_cached(slot, ex)
                        return 0
                    self.current = self.dedup.remember(peer, view.mid, view.type == CON,
                                                       self.now)
            if view.problems & PROBLEM_BAD_CRITICAL:
                self._reply_error(slot, &view, CODE_BAD_OPTION, b"Bad Option: unknown or "
                                  b"malformed critical option")
                return 0
            if view.problems & PROBLEM_PROXY:
                self._reply_error(slot, &view, CODE_PROXYING_NOT_SUPPORTED,
                                  b"Proxying not supported")
                return 0
            if self.fast is not None:
                out = self._tx_begin()
                writer_init(&w, out, SLOT_SIZE)
                if view.type == CON:
                    response_type = ACK
                    response_mid = view.mid
                else:
                    response_type = NON
                    self.mid += 1
                    response_mid = self.mid
                n = self.fast.respond(&view, &w, response_type, response_mid,
                                      self.max_message_size)
                if n > 0:
                    self.c.fast_path += 1
                    self.c.send_responses += 1
                    self._cache(out, n)
                    self._tx_commit(n, slot)
                    return 0
            return self._slow_request(slot, &view)

        if 2 <= code_class <= 5:                # a response
            self.c.recv_responses += 1
            self.endpoint.on_response(message_from_view(&view),
                                      address_tuple(udp_batch_addr(&self.rx, slot)))
            return 0
        # Classes 1, 6 and 7 are reserved (§12.1): a format error.
        self.c.recv_malformed += 1
        if view.type == CON:
            self._reply_empty(slot, RST, view.mid)
        return 0

    cdef int _slow_request(self, int slot, const MessageView* view) except -1:
        cdef Message request = message_from_view(view)
        cdef bytes data
        cdef uint8_t* out
        self.c.slow_path += 1
        try:
            response = self.endpoint.on_request(
                request, address_tuple(udp_batch_addr(&self.rx, slot)))
        except Exception:
            self.c.handler_errors += 1
            logger.exception("request handler failed")
            self._reply_error(slot, view, CODE_INTERNAL_ERROR, b"Internal Server Error")
            return 0
        if response is None:                    # deferred: the endpoint sends it later
            if view.type == CON:                # §5.2.2: empty ACK now, response later
                self._reply_empty(slot, ACK, view.mid)
                self.c.send_acks += 1
            return 0
        data = (<Message?>response).to_bytes()
        self.c.send_responses += 1
        if PyBytes_GET_SIZE(data) > SLOT_SIZE:
            self._cache(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            self._flush()                       # keep the order of datagrams to this peer
            self.send(data, address_tuple(udp_batch_addr(&self.rx, slot)))
            return 0
        out = self._tx_begin()
        memcpy(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self._cache(out, PyBytes_GET_SIZE(data))
        self._tx_commit(PyBytes_GET_SIZE(data), slot)
        return 0

    # -- sending ----------------------------------------------------------------------------
    cdef void _resend_cached(self, int slot, Exchange* ex) noexcept:
        cdef uint8_t* out
        if ex.response_length <= SLOT_SIZE:
            out = self._tx_begin()
            memcpy(out, ex.response, ex.response_length)
            self._tx_commit(ex.response_length, slot)
            return
        self._flush()                           # too large for a batch slot: send on its own
        self._send_now(slot, ex.response, ex.response_length)

    cdef void _send_now(self, int slot, const uint8_t* data, Py_ssize_t length) noexcept:
        """Send *data* to the source of rx *slot* at once (after a flush: keeps the order)."""
        if udp_send_one(self.fd, data, length, udp_batch_addr(&self.rx, slot),
                        udp_batch_addrlen(&self.rx, slot)) < 0:
            self.c.send_errors += 1

    cdef uint8_t* _tx_begin(self) noexcept:
        if self.tx.count == self.tx.capacity:
            self._flush()
        return udp_batch_buffer(&self.tx, self.tx.count)

    cdef void _tx_commit(self, Py_ssize_t length, int slot) noexcept:
        udp_batch_queue(&self.tx, length, udp_batch_addr(&self.rx, slot),
                        udp_batch_addrlen(&self.rx, slot))

    cdef void _cache(self, const uint8_t* data, Py_ssize_t length) noexcept:
        if self.current != NULL:
            self.dedup.store_response(self.current, data, length)

    cdef void _reply_empty(self, int slot, int type, uint16_t mid) noexcept:
        cdef uint8_t* out = self._tx_begin()
        out[0] = 0x40 | (type << 4)
        out[1] = 0
        out[2] = mid >> 8
        out[3] = mid & 0xFF
        if type == RST:
            self.c.send_rejects += 1
        self._cache(out, 4)
        self._tx_commit(4, slot)

    cdef void _reply_error(self, int slot, const MessageView* request, int code,
                           const char* text) noexcept:
        cdef uint8_t* out = self._tx_begin()
        cdef Writer w
        cdef uint16_t mid
        cdef int type
        if request.type == CON:
            type = ACK
            mid = request.mid
        else:
            type = NON
            self.mid += 1
            mid = self.mid
        writer_init(&w, out, SLOT_SIZE)
        write_header(&w, type, code, mid, request.token, request.token_length)
        write_payload(&w, <const uint8_t*>text, strlen(text))
        self.c.send_responses += 1
        self._cache(out, writer_length(&w))
        self._tx_commit(writer_length(&w), slot)

    cdef void _flush(self) noexcept:
        if self.tx.count:
            self.c.send_errors += udp_batch_send(self.fd, &self.tx)

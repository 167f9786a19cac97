# The UDP engine: batched datagram I/O and the per-datagram CoAP message layer in C.

from libc.stdint cimport uint8_t, uint16_t
from extplugtest.coap._codec cimport MessageView, Writer
from extplugtest.coap._dedup cimport DeduplicationCache, Exchange, PeerKey

from extplugtest._net cimport sockaddr_storage, udp_batch

cdef enum:
    RX_BATCH = 64
    TX_BATCH = 128
    SLOT_SIZE = 2048            # Californium's UDP.DATAGRAM_SIZE
    MAX_BATCHES = 8             # per wake-up, so that other callbacks get their turn

cdef int peer_key_from_sockaddr(PeerKey* key, const sockaddr_storage* addr) noexcept nogil

cdef class FastResource:
    """A resource answered entirely in C for its common requests.

    respond() writes a complete response (header included) for *request* and returns its
    length, or returns 0 to leave the request to the Python resource of the same path (which
    it must do for a payload above *max_payload*: that response goes block-wise)."""
    cdef Py_ssize_t respond(self, const MessageView* request, Writer* out, int response_type,
                            uint16_t response_mid, Py_ssize_t max_payload) noexcept

cdef struct EngineCounters:
    unsigned long long recv_requests
    unsigned long long recv_duplicate_requests
    unsigned long long recv_responses
    unsigned long long recv_acks
    unsigned long long recv_rejects
    unsigned long long recv_pings
    unsigned long long recv_ignored
    unsigned long long recv_malformed
    unsigned long long recv_truncated
    unsigned long long recv_errors
    unsigned long long send_responses
    unsigned long long send_acks
    unsigned long long send_rejects
    unsigned long long send_errors
    unsigned long long fast_path
    unsigned long long slow_path
    unsigned long long handler_errors

cdef class UdpEngine:
    cdef readonly int fd
    cdef readonly int family
    cdef object endpoint
    cdef readonly DeduplicationCache dedup
    cdef FastResource fast
    cdef udp_batch rx
    cdef udp_batch tx
    cdef uint16_t mid
    cdef double now
    cdef int max_batches
    cdef Py_ssize_t max_message_size
    cdef EngineCounters c
    cdef Exchange* current      # dedup entry of the request being processed, or NULL

    # Hooks a protection layer below CoAP overrides (dtls._datapath.DtlsEngine):
    cdef int _receive(self, int slot) except -1
    cdef void _send_now(self, int slot, const uint8_t* data, Py_ssize_t length) noexcept
    cdef void _tx_commit(self, Py_ssize_t length, int slot) noexcept
    cdef void _flush(self) noexcept

    cdef int _process(self, int slot) except -1
    cdef int _slow_request(self, int slot, const MessageView* view) except -1
    cdef void _resend_cached(self, int slot, Exchange* ex) noexcept
    cdef uint8_t* _tx_begin(self) noexcept
    cdef void _cache(self, const uint8_t* data, Py_ssize_t length) noexcept
    cdef void _reply_empty(self, int slot, int type, uint16_t mid) noexcept
    cdef void _reply_error(self, int slot, const MessageView* request, int code,
                           const char* text) noexcept

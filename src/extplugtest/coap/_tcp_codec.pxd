# CoAP over TCP and TLS (RFC 8323), C level.
#
# frame_header() reads the variable-length header of a frame (§3.2); parse_frame() turns a whole
# request/response frame into the MessageView of _codec.pxd, with the same option checks as over
# UDP. TcpEngine is the per-connection message layer: framing, signalling (§5), requests to a
# FastResource or to the Python endpoint, bounded buffers and the connection limits.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from extplugtest.coap._codec cimport Message, MessageView
from extplugtest.coap._udp cimport FastResource

cdef enum:
    TCP_MAX_HEADER = 14             # Len/TKL, 32-bit extended length, Code, 8-byte token
    BASE_MAX_MESSAGE_SIZE = 1152    # §5.3.1: the base value of Max-Message-Size
    SIGNAL_CSM = 0xE1               # 7.01 (§5.3)
    SIGNAL_PING = 0xE2              # 7.02 (§5.4)
    SIGNAL_PONG = 0xE3              # 7.03
    SIGNAL_RELEASE = 0xE4           # 7.04 (§5.5)
    SIGNAL_ABORT = 0xE5             # 7.05 (§5.6)

cdef struct FrameHeader:
    Py_ssize_t token_offset         # bytes before the token: Len/TKL, extended length, Code
    Py_ssize_t body_length          # Len: options, payload marker and payload
    Py_ssize_t total                # the whole frame
    uint8_t token_length
    uint8_t code

cdef Py_ssize_t frame_header(const uint8_t* data, Py_ssize_t available,
                             FrameHeader* h) noexcept nogil
cdef int parse_frame(const uint8_t* frame, const FrameHeader* h, uint8_t* scratch,
                     MessageView* view) noexcept nogil
cdef Py_ssize_t frame_header_size(Py_ssize_t body_length) noexcept nogil
cdef Py_ssize_t frame_from_datagram(const uint8_t* datagram, Py_ssize_t length,
                                    uint8_t* out) noexcept nogil

cdef struct TcpCounters:
    unsigned long long accepted
    unsigned long long refused
    unsigned long long accept_errors
    unsigned long long handshakes_failed
    unsigned long long closed_by_peer
    unsigned long long closed_idle
    unsigned long long closed_slow
    unsigned long long closed_stalled
    unsigned long long closed_overflow
    unsigned long long closed_error
    unsigned long long closed_shutdown
    unsigned long long aborts_sent
    unsigned long long aborts_received
    unsigned long long releases_sent
    unsigned long long releases_received
    unsigned long long csm_received
    unsigned long long csm_missing
    unsigned long long pings
    unsigned long long pongs_received
    unsigned long long read_pauses
    unsigned long long recv_requests
    unsigned long long recv_responses
    unsigned long long recv_empty
    unsigned long long recv_ignored
    unsigned long long recv_malformed
    unsigned long long recv_oversized
    unsigned long long recv_errors
    unsigned long long send_responses
    unsigned long long send_rejects
    unsigned long long send_errors
    unsigned long long fast_path
    unsigned long long slow_path
    unsigned long long handler_errors
    unsigned long long ring_rearms
    unsigned long long ring_submit_errors

cdef class TcpConnection:
    cdef readonly object peer
    cdef readonly int fd                # the socket, or -1 for a stream fed by feed() (TLS)
    cdef object sock
    cdef object transport               # the asyncio transport of a fed stream
    cdef TcpEngine engine
    cdef uint8_t* rx                    # received bytes kept for later: an incomplete frame,
    cdef Py_ssize_t rx_length           # or frames left while the peer does not read
    cdef Py_ssize_t rx_capacity
    cdef uint8_t* tx                    # bytes the socket did not take yet
    cdef Py_ssize_t tx_length
    cdef Py_ssize_t tx_capacity
    cdef readonly bint csm_received
    cdef readonly uint32_t peer_max_message_size
    cdef readonly bint peer_block_wise
    cdef readonly double opened
    cdef readonly double last_activity
    cdef readonly double partial_since  # when the pending incomplete frame began, 0: none
    cdef readonly double stalled_since  # since when unsent bytes wait, 0: none
    cdef readonly unsigned long long messages
    cdef readonly bint closed
    cdef bint releasing
    cdef bint congested                 # frames wait in rx until the peer takes our answers
    cdef bint reading
    cdef bint writing
    # io_uring backend: a multishot receive stays armed; one send is in flight at a time, from
    # `flight`, while what comes meanwhile collects in `tx`. Each request in flight holds a
    # reference to the connection.
    cdef uint8_t* flight
    cdef Py_ssize_t flight_length
    cdef Py_ssize_t flight_offset       # of it, taken by the socket so far
    cdef Py_ssize_t flight_capacity
    cdef int ring_ops
    cdef bint armed
    cdef int slot                       # its registered-file slot, -1: none

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

cdef extern from "io_ring.h" nogil:
    ctypedef struct xr_ring:
        int fd
        uint32_t buf_count
        uint32_t buf_size
        int buf_incremental
    struct xr_sqe:
        pass
    struct xr_cqe:
        uint64_t user_data
        int res
        uint32_t flags
    enum:
        XR_CQE_F_BUFFER
        XR_CQE_F_MORE
        XR_CQE_BUFFER_SHIFT
    int xr_open(xr_ring* r, unsigned entries, unsigned file_slots)
    int xr_provide_buffers(xr_ring* r, unsigned buf_count, unsigned buf_size, int incremental)
    int xr_file_add(xr_ring* r, int fd)
    void xr_file_remove(xr_ring* r, int slot)
    void xr_close(xr_ring* r)
    xr_sqe* xr_get_sqe(xr_ring* r)
    void xr_prep_recv_multishot(xr_sqe* sqe, int fd, int slot, uint64_t user_data)
    void xr_prep_send(xr_sqe* sqe, int fd, int slot, const void* data, uint32_t length,
                      int msg_flags, uint64_t user_data)
    void xr_prep_cancel(xr_sqe* sqe, uint64_t target)
    uint32_t xr_pending(const xr_ring* r)
    int xr_submit(xr_ring* r, unsigned wait_nr)
    bint xr_work_waiting(const xr_ring* r)
    uint32_t xr_cq_head(const xr_ring* r)
    uint32_t xr_cq_tail(const xr_ring* r)
    const xr_cqe* xr_cqe_at(const xr_ring* r, uint32_t index)
    void xr_cq_advance(xr_ring* r, uint32_t head)
    int xr_cq_find(const xr_ring* r, uint64_t user_data, int* res)
    void xr_buf_recycle(xr_ring* r, uint16_t bid)
    const uint8_t* xr_buf_data(xr_ring* r, uint16_t bid, uint32_t length, uint32_t cqe_flags,
                               int* finished)

cdef class TcpEngine:
    cdef object endpoint
    cdef object on_close
    cdef int epfd                       # the plain sockets' epoll set (epoll backend)
    cdef xr_ring ring                   # their io_uring (io_uring backend)
    cdef readonly bint uring
    cdef Py_ssize_t ring_ops            # requests in flight on the ring
    cdef double now                     # the clock of the poll round under way
    cdef epoll_event* events
    cdef list closing                   # closed during one poll, kept alive until its end
    cdef bint polling
    cdef FastResource fast
    cdef readonly dict connections
    cdef readonly Py_ssize_t max_message_size
    cdef readonly Py_ssize_t max_pending
    cdef Py_ssize_t max_response_payload
    cdef uint8_t* buf                   # one read, after the kept incomplete frame
    cdef Py_ssize_t buf_capacity
    cdef uint8_t* out                   # the answers to one read, sent with one write
    cdef Py_ssize_t out_length
    cdef uint8_t* scratch               # a frame rewritten as a datagram for parse_view
    cdef uint8_t* response              # a FastResource's datagram answer
    cdef bytes csm
    cdef TcpConnection current          # the connection whose read is being processed
    cdef uint16_t mid
    cdef TcpCounters c

    cdef TcpConnection _new(self, peer)
    cdef int _provide_buffers(self, unsigned count, unsigned size, bint incremental)
    cdef int _send_csm(self, TcpConnection conn) except -1
    cdef int _release(self, TcpConnection conn) except -1
    cdef int _read(self, TcpConnection conn) except -1
    cdef int _drain(self, TcpConnection conn) except -1
    cdef int _interest(self, TcpConnection conn) except -1
    cdef int _received(self, TcpConnection conn, const uint8_t* data,
                       Py_ssize_t length) except -1
    cdef int _input(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length) except -1
    cdef Py_ssize_t _frames(self, TcpConnection conn, const uint8_t* data,
                            Py_ssize_t length) except -1
    cdef int _frame(self, TcpConnection conn, const uint8_t* frame,
                    const FrameHeader* h) except -1
    cdef int _request(self, TcpConnection conn, const MessageView* view) except -1
    cdef int _signal(self, TcpConnection conn, const uint8_t* frame,
                     const FrameHeader* h) except -1
    cdef int _keep(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length,
                   bint append) except -1
    cdef int _resume(self, TcpConnection conn) except -1
    cdef bint _is_congested(self, TcpConnection conn) except -1
    cdef int _emit(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length) except -1
    cdef int _emit_message(self, TcpConnection conn, Message message) except -1
    cdef int _emit_error(self, TcpConnection conn, bytes token, int code,
                         bytes text) except -1
    cdef int _write(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length) except -1
    cdef int _flush_current(self) except -1
    cdef int _pause(self, TcpConnection conn, bint pause) except -1
    cdef int _abort(self, TcpConnection conn, bytes text, int bad_csm_option,
                    int reason) except -1
    cdef int _close(self, TcpConnection conn, int reason) except -1
    cdef xr_sqe* _ring_sqe(self) except NULL
    cdef int _ring_submit(self) except -1
    cdef int _ring_kick(self) except -1
    cdef int _ring_arm(self, TcpConnection conn) except -1
    cdef int _ring_cancel(self, TcpConnection conn, int op) except -1
    cdef int _ring_send(self, TcpConnection conn) except -1
    cdef int _ring_release(self, TcpConnection conn) except -1
    cdef Py_ssize_t _ring_reap(self) except -1
    cdef int _ring_complete(self, TcpConnection conn, int op, int res,
                            uint32_t flags) except -1
    cdef int _ring_close(self, TcpConnection conn) except -1

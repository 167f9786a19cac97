# cython: freethreading_compatible = False
"""CoAP over TCP and TLS (RFC 8323): the framing codec and the per-connection message layer.

Framing (§3.2): a frame starts with Len (4 bits) and TKL (4 bits); Len 0-12 is the length of
options, payload marker and payload, 13/14/15 announce an 8/16/32-bit extended length holding
Len-13, Len-269 or Len-65805. Code and token follow, then options and payload as over UDP. There
is no version, type or MID. A request/response frame is parsed by rewriting its header as a UDP
one (CON, MID 0) and running ``parse_view`` of _codec.pyx on it, so the option rules are the same
on both transports; signalling options (class 7) have their own number space (§5.2) and are read
raw.

``TcpEngine`` is the message layer of one endpoint's connections. Plain TCP sockets are read and
written from C, with one of two I/O backends whose descriptor the event loop watches, so one
wake-up serves every ready connection (``poll``): io_uring where the kernel allows it (a
multishot receive per connection into provided buffers, one send in flight per connection, the
sends of a round submitted together: csrc/io_ring.h), else an epoll set with recv and send.
TLS streams are fed by their asyncio protocol and written through its transport. Per read:
every complete frame is handled (the incomplete rest is kept, bounded by the Max-Message-Size
we announce), and the answers leave with one write. Signalling (§5): a CSM goes out first on
every connection, the peer's CSM sets its Max-Message-Size and Block-wise-Transfer, Ping gets a
Pong with the same token, Release closes after the answers, Abort closes at once; a malformed or
oversized message, an unknown critical signalling option or a bad CSM is answered with Abort
(§5.6). Requests go to a FastResource or to the Python endpoint; responses to the endpoint's own
requests are matched by token there. Unsent bytes are bounded per connection: reading pauses
above a quarter of the bound, and the connection is closed when it is exceeded. ``sweep`` closes
idle, slow (an incomplete frame for too long, or no message at all) and stalled connections;
all is counted.
"""

import logging
import resource

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport EAGAIN, EINTR, EINVAL, ENOBUFS, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from extplugtest.coap._codec cimport (
    CON, MAX_TOKEN_LENGTH, NON, PARSE_OK, PROBLEM_BAD_CRITICAL, PROBLEM_PROXY, Message,
    MessageView, Writer, message_from_view, parse_view, write_option, write_payload,
    writer_init, writer_length,
)
from extplugtest.coap._codec import MessageFormatError
from extplugtest._poll cimport POLLIN, poll, pollfd

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK
    int ECANCELED

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int MSG_NOSIGNAL

cdef extern from "<sys/epoll.h>" nogil:
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    int EPOLL_CTL_MOD
    int EPOLL_CTL_DEL
    uint32_t EPOLLIN
    uint32_t EPOLLOUT
    uint32_t EPOLLERR
    uint32_t EPOLLHUP

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

logger = logging.getLogger("extplugtest.coap.tcp")

DEF READ_SIZE = 65536           # bytes asked for per recv
DEF OUT_CAPACITY = 65536        # answers collected per read before they are written
DEF TX_MIN_CAPACITY = 256       # a send buffer to start with: small, so that 1000s stay in cache
DEF RESPONSE_CAPACITY = 4096    # a FastResource answer (its payload is at most 1024 bytes)
DEF MAX_EVENTS = 256            # socket events per epoll_wait
DEF MAX_ROUNDS = 4              # epoll_waits per wake-up, so that other callbacks get their turn
DEF RING_ENTRIES = 1024         # io_uring submission slots (4x as many completion slots)
DEF RING_BUFFERS = 1024         # provided receive buffers (a power of two) ...
DEF RING_BUFFER_SIZE = 4096     # ... of this size: a recv completes with at most one
DEF RING_INC_BUFFERS = 64       # where the kernel fills them incrementally (6.12): fewer ...
DEF RING_INC_BUFFER_SIZE = 65536    # ... larger ones, each taking many receives in a row
DEF RING_FILES = 16384         # registered-file slots (beyond them, plain descriptors)
DEF CONNECTION_BYTES = 256      # a TcpConnection's size at most (prefetched whole; tested)
DEF OP_RECV = 1                 # io_uring requests carry the connection and one of these
DEF OP_SEND = 2

#: I/O backends of the engine's plain sockets ("auto": io_uring where the kernel allows it).
IO_BACKENDS = ("auto", "io_uring", "epoll")
#: The bytes of a connection the io_uring reap prefetches: TcpConnection must fit (a test says).
PREFETCHED_CONNECTION_BYTES = CONNECTION_BYTES

#: Signalling codes (RFC 8323 §11.1) for users of the Python API.
CSM = SIGNAL_CSM
PING = SIGNAL_PING
PONG = SIGNAL_PONG
RELEASE = SIGNAL_RELEASE
ABORT = SIGNAL_ABORT
#: Signalling option numbers (§11.2): per code, so two names share a number.
MAX_MESSAGE_SIZE = 2
BLOCK_WISE_TRANSFER = 4
CUSTODY = 2
ALTERNATIVE_ADDRESS = 2
HOLD_OFF = 4
BAD_CSM_OPTION = 2
#: §5.3.1: the Max-Message-Size every peer starts with.
BASE_MESSAGE_SIZE = BASE_MAX_MESSAGE_SIZE

cdef enum:
    CODE_BAD_OPTION = 0x82                  # 4.02
    CODE_INTERNAL_ERROR = 0xA0              # 5.00
    CODE_PROXYING_NOT_SUPPORTED = 0xA5      # 5.05

cdef enum CloseReason:
    CLOSE_PEER = 1          # FIN from the peer, or its Release (§5.5)
    CLOSE_IDLE
    CLOSE_SLOW              # an incomplete frame for too long, or no message at all
    CLOSE_STALLED           # the peer does not take what is sent
    CLOSE_OVERFLOW          # more unsent bytes than the bound
    CLOSE_ERROR             # a socket error
    CLOSE_SHUTDOWN
    CLOSE_ABORTED           # an Abort sent or received (counted where it happens)

_REASONS = {"peer": CLOSE_PEER, "idle": CLOSE_IDLE, "slow": CLOSE_SLOW,
            "stalled": CLOSE_STALLED, "overflow": CLOSE_OVERFLOW, "error": CLOSE_ERROR,
            "shutdown": CLOSE_SHUTDOWN, "aborted": CLOSE_ABORTED}


cdef inline Py_ssize_t _unsent(TcpConnection conn) noexcept:
    """Bytes handed to a plain socket that it has not taken: waiting in tx, and the rest of
    an io_uring send in flight."""
    return conn.tx_length + conn.flight_length - conn.flight_offset


cdef extern from *:
    void __builtin_prefetch(const void* address) nogil


cdef inline void _prefetch_connection(void* address) noexcept nogil:
    """Ask for a connection's fields before they are needed: every cache line of its
    CONNECTION_BYTES, wherever the object starts in a line (NULL is harmless)."""
    cdef char* start = <char*>address
    cdef int offset
    for offset in range(0, CONNECTION_BYTES, 64):
        __builtin_prefetch(start + offset)
    __builtin_prefetch(start + CONNECTION_BYTES - 1)


cdef inline uint64_t _ring_id(TcpConnection conn, int op) noexcept:
    """An io_uring request's user data: the connection's address (objects are 16-byte
    aligned) with the operation in the low bits."""
    return <uint64_t><uintptr_t><void*>conn | <uint64_t>op


cdef inline void* _ring_connection(uint64_t user_data) noexcept nogil:
    """The connection's address in a request's user data (NULL: a cancel's completion)."""
    return <void*><uintptr_t>(user_data & ~(<uint64_t>3))


def _file_slots() -> int:
    """Registered files may not exceed RLIMIT_NOFILE."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return RING_FILES if soft == resource.RLIM_INFINITY else max(0, min(RING_FILES, soft))


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# ---------------------------------------------------------------------------------------------
# Framing (§3.2)


cdef Py_ssize_t frame_header(const uint8_t* data, Py_ssize_t available,
                             FrameHeader* h) noexcept nogil:
    """The length of the frame starting at *data* (its header goes into *h*); 0 while the header
    is incomplete; -1 for a token length above 8 (§3.2 keeps RFC 7252's TKL rule)."""
    cdef Py_ssize_t extended, length
    cdef uint8_t nibble
    if available < 1:
        return 0
    nibble = data[0] >> 4
    h.token_length = data[0] & 0x0F
    if h.token_length > MAX_TOKEN_LENGTH:
        return -1
    extended = 0 if nibble < 13 else (1 if nibble == 13 else (2 if nibble == 14 else 4))
    if available < 2 + extended:
        return 0
    if extended == 0:
        length = nibble
    elif extended == 1:
        length = data[1] + 13
    elif extended == 2:
        length = ((data[1] << 8) | data[2]) + 269
    else:
        length = ((<Py_ssize_t>data[1] << 24) | (<Py_ssize_t>data[2] << 16)
                  | (<Py_ssize_t>data[3] << 8) | data[4]) + 65805
    h.code = data[1 + extended]
    h.token_offset = 2 + extended
    h.body_length = length
    h.total = h.token_offset + h.token_length + length
    return h.total


cdef int parse_frame(const uint8_t* frame, const FrameHeader* h, uint8_t* scratch,
                     MessageView* view) noexcept nogil:
    """Parse a whole request/response frame into *view*, which points into *scratch* (room for
    4 + TKL + Len bytes): the header becomes a UDP one (CON, MID 0) for ``parse_view``."""
    cdef Py_ssize_t rest = h.token_length + h.body_length
    scratch[0] = 0x40 | h.token_length
    scratch[1] = h.code
    scratch[2] = 0
    scratch[3] = 0
    memcpy(scratch + 4, frame + h.token_offset, rest)   # the token and the body are adjacent
    return parse_view(scratch, 4 + rest, view)


cdef Py_ssize_t frame_header_size(Py_ssize_t body_length) noexcept nogil:
    """Len/TKL, the extended length and Code: 2, 3, 4 or 6 bytes."""
    if body_length < 13:
        return 2
    if body_length < 269:
        return 3
    if body_length < 65805:
        return 4
    return 6


cdef Py_ssize_t _put_header(uint8_t* out, int code, int token_length,
                            Py_ssize_t body_length) noexcept nogil:
    """Write Len/TKL, the extended length and Code; returns their size."""
    cdef Py_ssize_t value
    if body_length < 13:
        out[0] = <uint8_t>((body_length << 4) | token_length)
        out[1] = <uint8_t>code
        return 2
    if body_length < 269:
        out[0] = <uint8_t>(0xD0 | token_length)
        out[1] = <uint8_t>(body_length - 13)
        out[2] = <uint8_t>code
        return 3
    if body_length < 65805:
        value = body_length - 269
        out[0] = <uint8_t>(0xE0 | token_length)
        out[1] = <uint8_t>(value >> 8)
        out[2] = <uint8_t>(value & 0xFF)
        out[3] = <uint8_t>code
        return 4
    value = body_length - 65805
    out[0] = <uint8_t>(0xF0 | token_length)
    out[1] = <uint8_t>(value >> 24)
    out[2] = <uint8_t>((value >> 16) & 0xFF)
    out[3] = <uint8_t>((value >> 8) & 0xFF)
    out[4] = <uint8_t>(value & 0xFF)
    out[5] = <uint8_t>code
    return 6


cdef Py_ssize_t frame_from_datagram(const uint8_t* datagram, Py_ssize_t length,
                                    uint8_t* out) noexcept nogil:
    """Reframe a well-formed UDP message (header, token, body) for TCP into *out* (room for
    length + 2 bytes): the same code, token, options and payload; type and MID are dropped."""
    cdef int token_length = datagram[0] & 0x0F
    cdef Py_ssize_t body = length - 4 - token_length
    cdef Py_ssize_t head = _put_header(out, datagram[1], token_length, body)
    memcpy(out + head, datagram + 4, token_length + body)
    return head + token_length + body


cdef int _next_option(const uint8_t* body, Py_ssize_t length, Py_ssize_t* pos,
                      uint32_t* number, Py_ssize_t* value_at,
                      Py_ssize_t* value_length) noexcept nogil:
    """Step over one raw option (RFC 7252 §3.1): 1 with it in *number*/*value_at*/
    *value_length*, 0 at the end or at the payload marker (*pos* then at the payload), -1 for
    a format error."""
    cdef Py_ssize_t p = pos[0]
    cdef uint32_t delta, size
    cdef uint8_t byte
    if p >= length:
        return 0
    byte = body[p]
    p += 1
    if byte == 0xFF:
        if p == length:
            return -1                   # a payload marker without payload (§3)
        pos[0] = p
        return 0
    delta = byte >> 4
    size = byte & 0x0F
    if delta == 15 or size == 15:
        return -1
    if delta == 13:
        if p + 1 > length:
            return -1
        delta = body[p] + 13
        p += 1
    elif delta == 14:
        if p + 2 > length:
            return -1
        delta = ((body[p] << 8) | body[p + 1]) + 269
        p += 2
    if size == 13:
        if p + 1 > length:
            return -1
        size = body[p] + 13
        p += 1
    elif size == 14:
        if p + 2 > length:
            return -1
        size = ((body[p] << 8) | body[p + 1]) + 269
        p += 2
    if p + size > length or number[0] + delta > 0xFFFF:
        return -1
    number[0] += delta
    value_at[0] = p
    value_length[0] = size
    pos[0] = p + size
    return 1


cdef struct Signal:
    bint has_max_message_size
    uint32_t max_message_size
    bint block_wise
    bint custody
    uint32_t bad_option                 # the first critical option not understood, 0: none
    Py_ssize_t payload_at               # -1: no payload


cdef int _read_signal(int code, const uint8_t* body, Py_ssize_t length,
                      Signal* s) noexcept nogil:
    """The options of a signalling message we understand (§5.3-5.6); -1: a format error."""
    cdef Py_ssize_t pos = 0, at = 0, size = 0
    cdef uint32_t number = 0
    cdef int i, step
    s.has_max_message_size = False
    s.max_message_size = 0
    s.block_wise = False
    s.custody = False
    s.bad_option = 0
    s.payload_at = -1
    while True:
        step = _next_option(body, length, &pos, &number, &at, &size)
        if step < 0:
            return -1
        if step == 0:
            break
        if code == SIGNAL_CSM and number == 2 and size <= 4:    # Max-Message-Size, uint
            s.has_max_message_size = True
            s.max_message_size = 0
            for i in range(size):
                s.max_message_size = (s.max_message_size << 8) | body[at + i]
        elif code == SIGNAL_CSM and number == 4:                # Block-wise-Transfer
            s.block_wise = True
        elif (code == SIGNAL_PING or code == SIGNAL_PONG) and number == 2:     # Custody
            s.custody = True
        elif code == SIGNAL_CSM and number == 2:
            if s.bad_option == 0:       # a Max-Message-Size that is not a uint: a bad CSM
                s.bad_option = 2
        elif number & 1 and s.bad_option == 0:
            s.bad_option = number       # critical and not understood (§5.2)
    if pos < length:
        s.payload_at = pos
    return 0


# ---------------------------------------------------------------------------------------------
# Python level codec


cdef bint _in_order(list options):
    cdef int last = -1
    for entry in options:
        if entry[0] < last:
            return False
        last = entry[0]
    return True


def _number(entry):
    return entry[0]


cdef Py_ssize_t _encoded_size_bound(Message message):
    cdef Py_ssize_t size = TCP_MAX_HEADER + 1 + len(message.payload)
    for entry in message.options:
        size += 5 + len(entry[1])
    return size


cdef Py_ssize_t _encode_into(Message message, uint8_t* out, Py_ssize_t capacity) except -2:
    """Frame *message* into *out* (at least ``_encoded_size_bound`` bytes); returns its length.
    Type and MID are not sent (§3.2)."""
    cdef Writer w
    cdef Py_ssize_t body, head, token_length = len(message.token)
    cdef const uint8_t* raw
    cdef bytes value
    cdef int number
    cdef uint8_t* start
    if token_length > MAX_TOKEN_LENGTH:
        raise ValueError("token longer than 8 bytes")
    options = message.options
    if not _in_order(options):
        options = sorted(options, key=_number)
    writer_init(&w, out + TCP_MAX_HEADER, capacity - TCP_MAX_HEADER)
    for number, value in options:
        if not 0 <= number <= 0xFFFF:
            raise ValueError(f"option number {number} out of range")
        raw = value
        write_option(&w, number, raw, len(value))
    raw = message.payload
    write_payload(&w, raw, len(message.payload))
    body = writer_length(&w)
    if body < 0:
        raise ValueError("message does not fit")
    head = frame_header_size(body)
    start = out + TCP_MAX_HEADER - token_length - head
    _put_header(start, message.code, token_length, body)
    if token_length:
        raw = message.token
        memcpy(start + head, raw, token_length)
    memmove(out, start, head + token_length + body)
    return head + token_length + body


def encode(Message message) -> bytes:
    """*message* as a CoAP-over-TCP frame (RFC 8323 §3.2; its type and MID are not sent)."""
    cdef Py_ssize_t size = _encoded_size_bound(message)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef Py_ssize_t length = _encode_into(message, <uint8_t*>PyBytes_AS_STRING(out), size)
    return out[:length]


def from_datagram(data) -> bytes:
    """A UDP-encoded message (RFC 7252 §3) reframed for TCP; raises MessageFormatError for
    anything shorter than its header and token."""
    cdef const uint8_t[:] raw = data
    cdef Py_ssize_t length = raw.shape[0]
    cdef bytes out
    if length < 4 or 4 + (raw[0] & 0x0F) > length or (raw[0] & 0x0F) > MAX_TOKEN_LENGTH:
        raise MessageFormatError("not a CoAP message")
    out = PyBytes_FromStringAndSize(NULL, length + 2)
    length = frame_from_datagram(&raw[0], length, <uint8_t*>PyBytes_AS_STRING(out))
    return out[:length]


def frame_size(data) -> int:
    """The length of the frame at the start of *data*, or 0 while its header is incomplete;
    raises MessageFormatError for a token length above 8."""
    cdef const uint8_t[:] raw = data
    cdef FrameHeader h
    cdef Py_ssize_t total
    if raw.shape[0] == 0:
        return 0
    total = frame_header(&raw[0], raw.shape[0], &h)
    if total < 0:
        raise MessageFormatError("token length above 8")
    return total


def decode(data) -> Message:
    """Parse exactly one frame. Requests and responses go through the option registry as over
    UDP (their type is CON for a request, NON otherwise; the MID is 0); the options of a
    signalling message (class 7) are returned raw. Raises MessageFormatError."""
    cdef const uint8_t[:] raw = data
    cdef FrameHeader h
    cdef MessageView view
    cdef Message message
    cdef Py_ssize_t total, pos = 0, at = 0, size = 0
    cdef uint32_t number = 0
    cdef int step
    cdef const uint8_t* body
    cdef bytes scratch
    if raw.shape[0] == 0:
        raise MessageFormatError("empty frame")
    total = frame_header(&raw[0], raw.shape[0], &h)
    if total < 0:
        raise MessageFormatError("token length above 8")
    if total == 0 or total != raw.shape[0]:
        raise MessageFormatError("frame length does not match its Len field")
    token = bytes(raw[h.token_offset:h.token_offset + h.token_length])
    body = &raw[0] + h.token_offset + h.token_length
    if h.code == 0 or h.code >> 5 == 7:
        # An Empty message (ignored by a recipient, §3.4) or a signalling message (§5).
        message = Message(NON, h.code, 0, token)
        while True:
            step = _next_option(body, h.body_length, &pos, &number, &at, &size)
            if step < 0:
                raise MessageFormatError("message format error")
            if step == 0:
                break
            message.options.append((number, bytes(raw[h.token_offset + h.token_length + at:
                                                      h.token_offset + h.token_length + at
                                                      + size])))
        if pos < h.body_length:
            message.payload = bytes(raw[h.token_offset + h.token_length + pos:])
        return message
    scratch = PyBytes_FromStringAndSize(NULL, 4 + h.token_length + h.body_length)
    if parse_frame(&raw[0], &h, <uint8_t*>PyBytes_AS_STRING(scratch), &view) != PARSE_OK:
        raise MessageFormatError("message format error")
    message = message_from_view(&view)
    message.type = CON if 1 <= h.code < 32 else NON
    return message


# ---------------------------------------------------------------------------------------------
# The engine


cdef class TcpConnection:
    """One connection: the peer's CSM, the kept incomplete frame and the bytes not sent yet."""

    def __cinit__(self):
        self.fd = -1
        self.slot = -1
        self.rx = NULL
        self.tx = NULL
        self.peer_max_message_size = BASE_MAX_MESSAGE_SIZE

    def __dealloc__(self):
        free(self.rx)
        free(self.tx)
        free(self.flight)

    @property
    def bert(self) -> bool:
        """§5.3.2: Block-wise-Transfer with a Max-Message-Size above 1152 announces BERT."""
        return self.peer_block_wise and self.peer_max_message_size > BASE_MAX_MESSAGE_SIZE

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame kept between reads."""
        return self.rx_length

    @property
    def pending(self) -> int:
        """Bytes handed over for sending that the peer has not taken yet."""
        if self.transport is not None and not self.closed:
            return self.transport.get_write_buffer_size()
        return _unsent(self)

    @property
    def reading_paused(self) -> bool:
        return not self.reading

    def __repr__(self):
        return f"<TcpConnection {self.peer} messages={self.messages} closed={self.closed}>"


cdef class TcpEngine:
    """The CoAP-over-TCP message layer of one endpoint.

    *endpoint* gets ``on_request(message, peer)`` (returns the response, or None when it sends
    one later) and ``on_response(message, peer)``; *on_close(peer)* is told about every closed
    connection (its observations end, §7). *max_message_size* is announced in our CSM and
    bounds every received frame; *max_pending* bounds the unsent bytes of a connection;
    *max_response_payload* is what a FastResource may answer in one message. *io* picks the
    I/O backend of plain sockets (``IO_BACKENDS``); ``io_backend`` says which one runs;
    io_uring receives land in *ring_buffers* (a power of two) buffers of *ring_buffer_size*
    bytes (0: the defaults below). With *ring_incremental*, where the kernel can (Linux 6.12),
    each buffer takes many receives side by side (64 of 64 KiB); else each receive takes a
    buffer of its own (1024 of 4 KiB).
    """

    def __cinit__(self, endpoint, FastResource fast=None,
                  Py_ssize_t max_message_size=9216, Py_ssize_t max_pending=262144,
                  Py_ssize_t max_response_payload=1024, on_close=None, str io="auto",
                  unsigned ring_buffers=0, unsigned ring_buffer_size=0,
                  bint ring_incremental=True):
        cdef int err
        self.epfd = -1
        self.ring.fd = -1
        if io not in IO_BACKENDS:
            raise ValueError(f"io must be one of {', '.join(IO_BACKENDS)}, not {io!r}")
        if max_message_size < BASE_MAX_MESSAGE_SIZE or max_message_size > 0xFFFFFFFF:
            raise ValueError("max_message_size must be 1152 .. 2^32-1 (RFC 8323 §5.3.1)")
        if max_pending < max_message_size:
            raise ValueError("max_pending must hold at least one message")
        self.endpoint = endpoint
        self.fast = fast
        self.on_close = on_close
        self.connections = {}
        self.max_message_size = max_message_size
        self.max_pending = max_pending
        self.max_response_payload = max_response_payload
        self.buf_capacity = max_message_size + READ_SIZE
        self.buf = <uint8_t*>malloc(self.buf_capacity)
        self.out = <uint8_t*>malloc(OUT_CAPACITY)
        self.scratch = <uint8_t*>malloc(max_message_size + 8)
        self.response = <uint8_t*>malloc(RESPONSE_CAPACITY)
        if not self.buf or not self.out or not self.scratch or not self.response:
            raise MemoryError()
        if io != "epoll":
            # Refused where io_uring is off (kernel.io_uring_disabled, a container's seccomp
            # profile) or too old for multishot receives: then epoll, unless asked for.
            if ring_buffers & (ring_buffers - 1) or ring_buffers > 32768:
                raise ValueError("ring_buffers must be a power of two up to 32768")
            err = xr_open(&self.ring, RING_ENTRIES, _file_slots())
            if err == 0:
                err = self._provide_buffers(ring_buffers, ring_buffer_size, ring_incremental)
            if err == 0:
                self.uring = True
            elif io == "io_uring":
                raise OSError(-err, "io_uring is not available (Linux 6.0 or later, not "
                                    "disabled by sysctl or seccomp): use io='epoll'")
        if not self.uring:
            self.events = <epoll_event*>malloc(MAX_EVENTS * sizeof(epoll_event))
            if not self.events:
                raise MemoryError()
            self.epfd = epoll_create1(EPOLL_CLOEXEC)
            if self.epfd < 0:
                raise OSError(errno, "epoll_create1 failed")
        self.closing = []
        csm = Message(CON, SIGNAL_CSM)
        csm.add_option(MAX_MESSAGE_SIZE, max_message_size)
        csm.add_option(BLOCK_WISE_TRANSFER, b"")
        self.csm = encode(csm)

    def __dealloc__(self):
        free(self.buf)
        free(self.out)
        free(self.scratch)
        free(self.response)
        free(self.events)
        if self.epfd >= 0:
            close(self.epfd)
        xr_close(&self.ring)

    @property
    def poll_fd(self) -> int:
        """Readable when a socket of the engine is: the event loop then calls ``poll``."""
        return self.ring.fd if self.uring else self.epfd

    @property
    def io_backend(self) -> str:
        return "io_uring" if self.uring else "epoll"

    @property
    def receive_buffers(self) -> tuple:
        """io_uring's receive buffers: (count, bytes each, filled incrementally), or None."""
        if not self.uring:
            return None
        return self.ring.buf_count, self.ring.buf_size, bool(self.ring.buf_incremental)

    cdef int _provide_buffers(self, unsigned count, unsigned size, bint incremental):
        """Buffers filled incrementally if asked and the kernel can, else one per receive;
        returns 0 or -errno (with the ring closed)."""
        cdef int err = -EINVAL
        if incremental:
            err = xr_provide_buffers(&self.ring, count or RING_INC_BUFFERS,
                                     size or RING_INC_BUFFER_SIZE, 1)
        if err == -EINVAL:                      # before Linux 6.12: not incrementally
            err = xr_provide_buffers(&self.ring, count or RING_BUFFERS,
                                     size or RING_BUFFER_SIZE, 0)
        if err:
            xr_close(&self.ring)
        return err

    # -- Python API -------------------------------------------------------------------------
    def open(self, sock, peer) -> TcpConnection:
        """Serve an accepted, non-blocking socket: our CSM goes out at once (§3.3)."""
        cdef TcpConnection conn = self._new(peer)
        cdef epoll_event event
        conn.sock = sock
        conn.fd = sock.fileno()
        if self.uring:
            conn.slot = xr_file_add(&self.ring, conn.fd)
            conn.reading = True
            self._ring_arm(conn)
            self._send_csm(conn)
            return conn
        event.events = EPOLLIN
        event.data.ptr = <void*>conn           # the connections dict keeps it alive
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, conn.fd, &event) < 0:
            conn.fd = -1
            self._close(conn, CLOSE_ERROR)
            raise OSError(errno, "epoll_ctl failed")
        conn.reading = True
        self._send_csm(conn)
        return conn

    def poll(self) -> None:
        """Event loop callback: serve the ready sockets (bounded per wake-up)."""
        cdef int n, i, _round
        cdef uint32_t flags
        cdef TcpConnection conn
        self.polling = True
        if self.uring:
            try:
                for _round in range(MAX_ROUNDS):
                    self.now = _now()
                    n = self._ring_reap()
                    if xr_pending(&self.ring) or xr_work_waiting(&self.ring):
                        self._ring_submit()     # our sends, and completions that wait for us
                    elif n == 0:
                        break
                    if xr_cq_head(&self.ring) == xr_cq_tail(&self.ring):
                        break
            finally:
                self.polling = False
                if xr_pending(&self.ring):
                    self._ring_submit()
                del self.closing[:]
            return
        try:
            for _round in range(MAX_ROUNDS):
                self.now = _now()
                n = epoll_wait(self.epfd, self.events, MAX_EVENTS, 0)
                for i in range(n):
                    conn = <TcpConnection>self.events[i].data.ptr
                    flags = self.events[i].events
                    if conn.closed:             # closed by an earlier event of this batch
                        continue
                    try:
                        if flags & EPOLLOUT:
                            self._drain(conn)
                        if flags & EPOLLIN and conn.reading:
                            self._read(conn)
                        elif flags & (EPOLLERR | EPOLLHUP) and not conn.closed:
                            self._close(conn, CLOSE_ERROR if flags & EPOLLERR else CLOSE_PEER)
                    except Exception:
                        self.c.handler_errors += 1
                        logger.exception("CoAP-over-TCP connection %s failed", conn.peer)
                if n < MAX_EVENTS:
                    break
        finally:
            self.polling = False
            del self.closing[:]                 # closed ones lived until their events passed

    def attach(self, transport, peer) -> TcpConnection:
        """Serve a stream whose bytes come through ``feed`` (TLS): our CSM goes out at once."""
        cdef TcpConnection conn = self._new(peer)
        conn.transport = transport
        # Its pause_writing/resume_writing then match _is_congested: reading pauses and
        # resumes at the same marks as for a plain socket.
        transport.set_write_buffer_limits(self.max_pending // 4, self.max_pending // 8)
        conn.reading = True
        self._send_csm(conn)
        return conn

    def feed(self, TcpConnection conn, data) -> None:
        """Bytes received on a fed stream."""
        cdef const uint8_t[:] raw = data
        if raw.shape[0]:
            self._received(conn, &raw[0], raw.shape[0])

    def connection(self, peer):
        """The open connection of *peer*, or None."""
        return self.connections.get(peer)

    def __len__(self):
        return len(self.connections)

    def send(self, data, peer) -> bool:
        """Send a UDP-encoded message (from the endpoint's generic code) reframed for TCP.
        Empty messages (ACK, RST) mean nothing here and are dropped."""
        cdef const uint8_t[:] raw = data
        cdef TcpConnection conn = self.connections.get(peer)
        cdef Py_ssize_t length = raw.shape[0]
        cdef bytes frame
        if length < 4 or raw[1] == 0:
            return False
        if conn is None or conn.closed:
            self.c.send_errors += 1
            return False
        frame = from_datagram(data)
        self._emit(conn, <const uint8_t*>PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame))
        return not conn.closed

    def send_message(self, Message message, peer) -> bool:
        """Send *message* to *peer*'s connection (notifications, separate responses, the
        server's own requests); False when there is no such connection."""
        cdef TcpConnection conn = self.connections.get(peer)
        if conn is None or conn.closed:
            self.c.send_errors += 1
            return False
        self._emit_message(conn, message)
        return not conn.closed

    def close(self, peer, str reason="shutdown", bint release=False) -> bool:
        """Close *peer*'s connection, after a Release (§5.5) if asked."""
        cdef TcpConnection conn = self.connections.get(peer)
        if conn is None:
            return False
        if release:
            self._release(conn)
        self._close(conn, _REASONS[reason])
        return True

    def close_all(self, bint release=True, double timeout=1.0) -> None:
        """Close every connection (after a Release if asked). With io_uring, then wait at most
        *timeout* s until the kernel has ended their requests (it holds references)."""
        cdef TcpConnection conn
        cdef double deadline = _now() + timeout
        cdef pollfd ready
        for conn in list(self.connections.values()):
            if release:
                self._release(conn)
            self._close(conn, CLOSE_SHUTDOWN)
        while self.uring and self.ring_ops > 0 and not self.polling and _now() < deadline:
            ready.fd = self.ring.fd
            ready.events = POLLIN
            poll(&ready, 1, 10)                 # the cancels' completions come quickly
            self._ring_submit()
            self.now = _now()
            self._ring_reap()

    def connection_lost(self, TcpConnection conn) -> None:
        """A fed stream ended (its transport is closed already)."""
        conn.transport = None
        self._close(conn, CLOSE_PEER)

    def sweep(self, double idle_timeout, double slow_timeout, double stall_timeout) -> int:
        """Close connections idle for *idle_timeout* s (after a Release), with an incomplete
        frame or without any message for *slow_timeout* s (half-open and slow-loris peers),
        or whose unsent bytes did not move for *stall_timeout* s. Returns how many."""
        cdef double now = _now()
        cdef TcpConnection conn
        cdef int closed = 0
        for conn in list(self.connections.values()):
            if now - conn.last_activity > idle_timeout:
                self._release(conn)
                self._close(conn, CLOSE_IDLE)
            elif ((conn.partial_since and now - conn.partial_since > slow_timeout)
                  or (conn.messages == 0 and now - conn.opened > slow_timeout)):
                self._abort(conn, b"no complete message in time", 0, CLOSE_SLOW)
            elif conn.stalled_since and now - conn.stalled_since > stall_timeout:
                self._close(conn, CLOSE_STALLED)
            else:
                continue
            closed += 1
        return closed

    def next_mid(self) -> int:
        """No MIDs over TCP (§3.2); a counter keeps the endpoint's bookkeeping keys distinct."""
        self.mid += 1
        return self.mid

    @property
    def dedup(self):
        """No deduplication over TCP: the transport is reliable (§3.3)."""
        return None

    def update_cached_response(self, address, int mid, data) -> bool:
        return False

    def count(self, str name, int amount=1):
        """Let the Python message layer add to the shared counters."""
        if name == "send-responses":
            self.c.send_responses += amount
        elif name == "send-rejects":
            self.c.send_rejects += amount
        elif name == "recv-ignored":
            self.c.recv_ignored += amount
        elif name == "tcp-refused":
            self.c.refused += amount
        elif name == "tcp-accept-errors":
            self.c.accept_errors += amount
        elif name == "tcp-handshakes-failed":
            self.c.handshakes_failed += amount
        elif name != "send-acks":      # no ACKs over TCP
            raise KeyError(name)

    def counters(self) -> dict:
        """Californium's health names where one exists, ``tcp-*`` for the connections."""
        return {
            "recv-requests": self.c.recv_requests,
            "recv-responses": self.c.recv_responses,
            "recv-ignored": self.c.recv_ignored + self.c.recv_empty,
            "recv-malformed": self.c.recv_malformed,
            "recv-oversized": self.c.recv_oversized,
            "recv-errors": self.c.recv_errors,
            "recv-pings": self.c.pings,
            "send-responses": self.c.send_responses,
            "send-rejects": self.c.send_rejects,
            "send-errors": self.c.send_errors,
            "fast-path": self.c.fast_path,
            "slow-path": self.c.slow_path,
            "handler-errors": self.c.handler_errors,
            "tcp-connections": len(self.connections),
            "tcp-accepted": self.c.accepted,
            "tcp-refused": self.c.refused,
            "tcp-accept-errors": self.c.accept_errors,
            "tcp-handshakes-failed": self.c.handshakes_failed,
            "tcp-closed-by-peer": self.c.closed_by_peer,
            "tcp-closed-idle": self.c.closed_idle,
            "tcp-closed-slow": self.c.closed_slow,
            "tcp-closed-stalled": self.c.closed_stalled,
            "tcp-closed-overflow": self.c.closed_overflow,
            "tcp-closed-error": self.c.closed_error,
            "tcp-closed-shutdown": self.c.closed_shutdown,
            "tcp-aborts-sent": self.c.aborts_sent,
            "tcp-aborts-received": self.c.aborts_received,
            "tcp-releases-sent": self.c.releases_sent,
            "tcp-releases-received": self.c.releases_received,
            "tcp-csm-received": self.c.csm_received,
            "tcp-csm-missing": self.c.csm_missing,
            "tcp-pongs-received": self.c.pongs_received,
            "tcp-read-pauses": self.c.read_pauses,
            "tcp-ring-rearms": self.c.ring_rearms,
            "tcp-ring-submit-errors": self.c.ring_submit_errors,
        }

    # -- connections ------------------------------------------------------------------------
    cdef TcpConnection _new(self, peer):
        cdef TcpConnection conn = TcpConnection()
        cdef TcpConnection old = self.connections.get(peer)
        if old is not None:                     # a stale entry for a reused address
            self._close(old, CLOSE_PEER)
        conn.engine = self
        conn.peer = peer
        conn.opened = conn.last_activity = _now()
        self.connections[peer] = conn
        self.c.accepted += 1
        return conn

    cdef int _send_csm(self, TcpConnection conn) except -1:
        self._write(conn, <const uint8_t*>PyBytes_AS_STRING(self.csm),
                    PyBytes_GET_SIZE(self.csm))
        return 0

    cdef int _release(self, TcpConnection conn) except -1:
        cdef uint8_t frame[2]
        if conn.closed:
            return 0
        _put_header(frame, SIGNAL_RELEASE, 0, 0)
        self.c.releases_sent += 1
        self._emit(conn, frame, 2)
        return 0

    # -- receiving --------------------------------------------------------------------------
    cdef int _read(self, TcpConnection conn) except -1:
        """One recv on a readable socket, after the kept incomplete frame."""
        cdef Py_ssize_t keep = conn.rx_length
        cdef ssize_t n
        if conn.closed or conn.congested:
            return 0
        if keep:
            memcpy(self.buf, conn.rx, keep)
        n = recv(conn.fd, self.buf + keep, self.buf_capacity - keep, 0)
        if n < 0:
            if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
                return 0
            self.c.recv_errors += 1
            return self._close(conn, CLOSE_ERROR)
        if n == 0:
            return self._close(conn, CLOSE_PEER)    # FIN: nothing more will come
        conn.rx_length = 0
        return self._input(conn, self.buf, keep + n)

    cdef int _received(self, TcpConnection conn, const uint8_t* data,
                       Py_ssize_t length) except -1:
        """Bytes received on a fed stream or an io_uring receive: after the kept incomplete
        frame, or kept while reading is paused (they were under way when it paused)."""
        cdef Py_ssize_t pos = 0, keep, take
        while pos < length and not conn.closed:
            keep = conn.rx_length
            if conn.congested or not conn.reading:
                conn.congested = True           # handled when reading resumes
                return self._keep(conn, data + pos, length - pos, True)
            if keep == 0:
                return self._input(conn, data + pos, length - pos)
            # Complete the kept frame: it and the new bytes must be adjacent.
            take = min(length - pos, self.buf_capacity - keep)
            memcpy(self.buf, conn.rx, keep)
            memcpy(self.buf + keep, data + pos, take)
            conn.rx_length = 0
            pos += take
            self._input(conn, self.buf, keep + take)
        return 0

    cdef int _input(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length) except -1:
        cdef Py_ssize_t used = 0, done
        conn.last_activity = self.now if self.polling else _now()   # one clock read a round
        while True:
            self.current = conn
            try:
                done = self._frames(conn, data + used, length - used)
                self._flush_current()
            finally:
                self.out_length = 0
                self.current = None
            used += done
            # Collected answers count as unsent until written: if the socket took them all,
            # go on with the frames of this read (each round uses at least one frame).
            if (not conn.congested or conn.closed or used == length
                    or self._is_congested(conn)):
                break
            conn.congested = False
        if conn.closed:
            return 0
        if conn.releasing:                      # the peer's Release: answers sent, close
            self._close(conn, CLOSE_PEER)
            return 0
        if conn.congested:                      # frames wait until the peer reads
            conn.partial_since = 0
            self._keep(conn, data + used, length - used, False)
            self._pause(conn, True)
        elif used < length:                     # an incomplete frame
            if used > 0 or not conn.partial_since:
                conn.partial_since = conn.last_activity
            self._keep(conn, data + used, length - used, False)
        else:
            conn.partial_since = 0
            self._keep(conn, NULL, 0, False)
        return 0

    cdef int _keep(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length,
                   bint append) except -1:
        """Keep received bytes for later (after what is kept already if *append*). That is an
        incomplete frame (below Max-Message-Size), or while the peer does not read our answers
        the rest of one read (and of one TLS record)."""
        cdef Py_ssize_t size = (conn.rx_length if append else 0) + length
        cdef uint8_t* grown
        if size == 0:
            free(conn.rx)
            conn.rx = NULL
            conn.rx_length = conn.rx_capacity = 0
            return 0
        if size > conn.rx_capacity:
            grown = <uint8_t*>realloc(conn.rx, max(size, min(self.max_message_size, 4096)))
            if grown == NULL:
                raise MemoryError()
            conn.rx = grown
            conn.rx_capacity = max(size, min(self.max_message_size, 4096))
        memmove(conn.rx + size - length, data, length)
        conn.rx_length = size
        return 0

    cdef bint _is_congested(self, TcpConnection conn) except -1:
        """The peer has not taken a quarter of the unsent-bytes bound yet: stop reading."""
        cdef Py_ssize_t waiting = self.out_length if conn is self.current else 0
        if conn.fd >= 0:
            waiting += _unsent(conn)
        elif conn.transport is not None:
            waiting += conn.transport.get_write_buffer_size()
        return waiting > self.max_pending // 4

    cdef int _resume(self, TcpConnection conn) except -1:
        """Reading resumed: first the frames that waited."""
        cdef uint8_t* kept = conn.rx
        cdef Py_ssize_t length = conn.rx_length
        conn.congested = False
        if length == 0 or conn.closed:
            return 0
        conn.rx = NULL                          # _input keeps its own rest
        conn.rx_length = conn.rx_capacity = 0
        try:
            self._input(conn, kept, length)
        finally:
            free(kept)
        return 0

    cdef Py_ssize_t _frames(self, TcpConnection conn, const uint8_t* data,
                            Py_ssize_t length) except -1:
        """Handle every complete frame; returns the bytes used."""
        cdef Py_ssize_t pos = 0, total
        cdef FrameHeader h
        while pos < length and not conn.closed and not conn.releasing:
            if self._is_congested(conn):
                conn.congested = True
                break
            total = frame_header(data + pos, length - pos, &h)
            if total < 0:
                self.c.recv_malformed += 1
                self._abort(conn, b"token length above 8", 0, CLOSE_ABORTED)
                break
            if total > self.max_message_size:
                self.c.recv_oversized += 1
                self._abort(conn, b"message larger than our Max-Message-Size", 0,
                            CLOSE_ABORTED)
                break
            if total == 0 or total > length - pos:
                break
            conn.messages += 1
            try:
                self._frame(conn, data + pos, &h)
            except Exception:
                self.c.handler_errors += 1
                logger.exception("CoAP-over-TCP message from %s failed", conn.peer)
            pos += total
        return pos

    cdef int _frame(self, TcpConnection conn, const uint8_t* frame,
                    const FrameHeader* h) except -1:
        cdef MessageView view
        cdef Message message
        cdef int code_class = h.code >> 5
        if h.code == 0:
            self.c.recv_empty += 1              # §3.4: an Empty message is ignored
            return 0
        if code_class == 7:
            return self._signal(conn, frame, h)
        if not conn.csm_received and conn.messages == 1:
            # §3.3 wants an Abort, but Californium's clients send no CSM at all: its base
            # values apply (counted).
            self.c.csm_missing += 1
        if code_class == 1 or code_class == 6:  # reserved (RFC 7252 §12.1)
            self.c.recv_malformed += 1
            self._abort(conn, b"reserved code class", 0, CLOSE_ABORTED)
            return 0
        if parse_frame(frame, h, self.scratch, &view) != PARSE_OK:
            self.c.recv_malformed += 1          # §5.6: a message format error means Abort
            self._abort(conn, b"message format error", 0, CLOSE_ABORTED)
            return 0
        if code_class == 0:
            return self._request(conn, &view)
        self.c.recv_responses += 1
        message = message_from_view(&view)
        message.type = NON                      # matched by token only (§3.3)
        self.endpoint.on_response(message, conn.peer)
        return 0

    cdef int _request(self, TcpConnection conn, const MessageView* view) except -1:
        cdef Writer w
        cdef Py_ssize_t n, size
        cdef Message request
        cdef bytes token
        self.c.recv_requests += 1
        if view.problems & (PROBLEM_BAD_CRITICAL | PROBLEM_PROXY):
            token = PyBytes_FromStringAndSize(<const char*>view.token, view.token_length)
            if view.problems & PROBLEM_BAD_CRITICAL:
                return self._emit_error(conn, token, CODE_BAD_OPTION,
                                        b"Bad Option: unknown or malformed critical option")
            return self._emit_error(conn, token, CODE_PROXYING_NOT_SUPPORTED,
                                    b"Proxying not supported")
        if self.fast is not None:
            writer_init(&w, self.response, RESPONSE_CAPACITY)
            n = self.fast.respond(view, &w, CON, 0, self.max_response_payload)
            if n > 0:
                size = n + 2
                if self.out_length + size > OUT_CAPACITY:
                    self._flush_current()
                    if conn.closed:
                        return 0
                self.out_length += frame_from_datagram(self.response, n,
                                                       self.out + self.out_length)
                self.c.fast_path += 1
                self.c.send_responses += 1
                return 0
        self.c.slow_path += 1
        request = message_from_view(view)
        try:
            response = self.endpoint.on_request(request, conn.peer)
        except Exception:
            self.c.handler_errors += 1
            logger.exception("request handler failed")
            return self._emit_error(conn, request.token, CODE_INTERNAL_ERROR,
                                    b"Internal Server Error")
        if response is None or conn.closed:     # deferred: the endpoint sends it later
            return 0
        self._emit_message(conn, <Message?>response)
        self.c.send_responses += 1
        return 0

    cdef int _signal(self, TcpConnection conn, const uint8_t* frame,
                     const FrameHeader* h) except -1:
        cdef Signal s
        cdef const uint8_t* token = frame + h.token_offset
        cdef uint8_t pong[TCP_MAX_HEADER + 1]
        cdef Py_ssize_t head
        if _read_signal(h.code, token + h.token_length, h.body_length, &s) < 0:
            self.c.recv_malformed += 1
            return self._abort(conn, b"message format error", 0, CLOSE_ABORTED)
        if h.code == SIGNAL_CSM:
            self.c.csm_received += 1
            if s.bad_option:                    # §5.3: an invalid CSM is a connection error
                return self._abort(conn, b"CSM option not supported", s.bad_option,
                                   CLOSE_ABORTED)
            if s.has_max_message_size:
                conn.peer_max_message_size = s.max_message_size
            if s.block_wise:
                conn.peer_block_wise = True
            conn.csm_received = True
        elif h.code == SIGNAL_PING:
            self.c.pings += 1
            if s.bad_option:
                return self._abort(conn, b"unknown critical option", 0, CLOSE_ABORTED)
            # §5.4: a Pong with the same token. Everything received before the Ping has been
            # handled (deferred handlers are under way), so Custody is answered at once.
            head = _put_header(pong, SIGNAL_PONG, h.token_length, 1 if s.custody else 0)
            memcpy(pong + head, token, h.token_length)
            if s.custody:
                pong[head + h.token_length] = 0x20     # option 2 (Custody), empty
            self._emit(conn, pong, head + h.token_length + (1 if s.custody else 0))
        elif h.code == SIGNAL_PONG:
            self.c.pongs_received += 1
        elif h.code == SIGNAL_RELEASE:
            self.c.releases_received += 1       # §5.5: close after answering what came
            conn.releasing = True
        elif h.code == SIGNAL_ABORT:
            self.c.aborts_received += 1         # §5.6: close at once
            self._close(conn, CLOSE_ABORTED)
        else:
            self.c.recv_malformed += 1
            self._abort(conn, b"unknown signalling code", 0, CLOSE_ABORTED)
        return 0

    # -- sending ----------------------------------------------------------------------------
    cdef int _emit(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length) except -1:
        """Queue a frame: behind the answers of the read being processed, else at once."""
        if conn.closed:
            return 0
        if conn is not self.current:
            return self._write(conn, data, length)
        if length > OUT_CAPACITY:               # too large to collect: after what waits
            self._flush_current()
            return self._write(conn, data, length)
        if self.out_length + length > OUT_CAPACITY:
            self._flush_current()
            if conn.closed:
                return 0
        memcpy(self.out + self.out_length, data, length)
        self.out_length += length
        return 0

    cdef int _emit_message(self, TcpConnection conn, Message message) except -1:
        cdef Py_ssize_t bound = _encoded_size_bound(message)
        cdef bytes frame
        if conn.closed:
            return 0
        if conn is self.current and bound <= OUT_CAPACITY:
            if self.out_length + bound > OUT_CAPACITY:
                self._flush_current()
                if conn.closed:
                    return 0
            self.out_length += _encode_into(message, self.out + self.out_length, bound)
            return 0
        frame = encode(message)
        return self._emit(conn, <const uint8_t*>PyBytes_AS_STRING(frame),
                          PyBytes_GET_SIZE(frame))

    cdef int _emit_error(self, TcpConnection conn, bytes token, int code,
                         bytes text) except -1:
        self.c.send_responses += 1
        return self._emit_message(conn, Message(NON, code, 0, token, None, text))

    cdef int _flush_current(self) except -1:
        cdef Py_ssize_t length = self.out_length
        if self.current is None or length == 0:
            return 0
        self.out_length = 0
        return self._write(self.current, self.out, length)

    cdef int _write(self, TcpConnection conn, const uint8_t* data, Py_ssize_t length) except -1:
        """Send now what the socket takes; keep the rest (bounded) until it is writable."""
        cdef ssize_t sent = 0
        cdef uint8_t* grown
        cdef Py_ssize_t capacity
        if conn.closed or length == 0:
            return 0
        if conn is not self.current:            # (_input has just set it)
            conn.last_activity = _now()
        if conn.fd < 0:                         # a fed stream: its transport buffers
            conn.transport.write(PyBytes_FromStringAndSize(<const char*>data, length))
            if conn.transport.get_write_buffer_size() > self.max_pending:
                self._close(conn, CLOSE_OVERFLOW)
            return 0
        if conn.tx_length == 0 and not self.uring:
            sent = send(conn.fd, data, length, MSG_NOSIGNAL)
            if sent < 0:
                if errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
                    self.c.send_errors += 1
                    self._close(conn, CLOSE_ERROR)
                    return 0
                sent = 0
            if sent == length:
                return 0
        if _unsent(conn) + length - sent > self.max_pending:
            self._close(conn, CLOSE_OVERFLOW)
            return 0
        if conn.tx_length + length - sent > conn.tx_capacity:
            capacity = max(2 * conn.tx_capacity, conn.tx_length + length - sent, TX_MIN_CAPACITY)
            capacity = min(capacity, self.max_pending)
            grown = <uint8_t*>realloc(conn.tx, capacity)
            if grown == NULL:
                raise MemoryError()
            conn.tx = grown
            conn.tx_capacity = capacity
        memcpy(conn.tx + conn.tx_length, data + sent, length - sent)
        conn.tx_length += length - sent
        if self.uring:
            if conn.flight_length == 0:         # (else it follows the send in flight)
                self._ring_send(conn)
        elif not conn.writing:
            conn.writing = True
            self._interest(conn)
            conn.stalled_since = conn.last_activity
        if _unsent(conn) > self.max_pending // 4:
            self._pause(conn, True)             # the peer reads too slowly: stop reading
        return 0

    cdef int _drain(self, TcpConnection conn) except -1:
        """The socket is writable again: send what waits."""
        cdef ssize_t sent
        if conn.closed or conn.tx_length == 0:
            return 0
        sent = send(conn.fd, conn.tx, conn.tx_length, MSG_NOSIGNAL)
        if sent < 0:
            if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
                return 0
            self.c.send_errors += 1
            return self._close(conn, CLOSE_ERROR)
        memmove(conn.tx, conn.tx + sent, conn.tx_length - sent)
        conn.tx_length -= sent
        conn.last_activity = _now()
        if sent > 0:
            conn.stalled_since = conn.last_activity
        if conn.tx_length == 0:
            conn.writing = False
            conn.stalled_since = 0
            self._interest(conn)
        if conn.tx_length <= self.max_pending // 8:
            self._pause(conn, False)
        return 0

    def pause_reading(self, TcpConnection conn, bint pause) -> None:
        """Flow control of a fed stream (its transport's pause_writing/resume_writing)."""
        self._pause(conn, pause)

    cdef int _pause(self, TcpConnection conn, bint pause) except -1:
        if conn.closed or conn.reading != pause:
            return 0
        conn.reading = not pause
        if pause:
            self.c.read_pauses += 1
        if conn.fd >= 0 and self.uring:
            if pause and conn.armed:
                self._ring_cancel(conn, OP_RECV)
            elif not pause and not conn.armed:
                self._ring_arm(conn)            # (else when the cancelled one has ended)
        elif conn.fd >= 0:
            self._interest(conn)
        elif pause:                             # the transport holds what waits: a stall
            conn.transport.pause_reading()      # counts from now until it drains
            conn.stalled_since = _now()
        else:
            conn.transport.resume_reading()
            conn.stalled_since = 0
        if not pause and conn.congested:
            self._resume(conn)
        return 0

    cdef int _interest(self, TcpConnection conn) except -1:
        """What the engine's epoll set watches on a socket: reading unless paused, writing
        while bytes wait."""
        cdef epoll_event event
        event.events = (EPOLLIN if conn.reading else 0) | (EPOLLOUT if conn.writing else 0)
        event.data.ptr = <void*>conn
        if epoll_ctl(self.epfd, EPOLL_CTL_MOD, conn.fd, &event) < 0:
            self.c.send_errors += 1
            return self._close(conn, CLOSE_ERROR)
        return 0

    cdef int _abort(self, TcpConnection conn, bytes text, int bad_csm_option,
                    int reason) except -1:
        """§5.6: Abort (with Bad-CSM-Option if given) and close without waiting."""
        cdef Message abort = Message(NON, SIGNAL_ABORT, 0, b"", None, text)
        if conn.closed:
            return 0
        if bad_csm_option:
            abort.add_option(BAD_CSM_OPTION, bad_csm_option)
        self.c.aborts_sent += 1
        self._emit_message(conn, abort)
        return self._close(conn, reason)

    cdef int _close(self, TcpConnection conn, int reason) except -1:
        """Send what can still be sent (best effort), close, forget the connection."""
        cdef Py_ssize_t length
        if conn.closed:
            return 0
        if conn is self.current and self.out_length:
            length = self.out_length
            self.out_length = 0
            self._write(conn, self.out, length)
            if conn.closed:
                return 0                        # closed by that write (counted there)
        conn.closed = True
        if reason == CLOSE_PEER:
            self.c.closed_by_peer += 1
        elif reason == CLOSE_IDLE:
            self.c.closed_idle += 1
        elif reason == CLOSE_SLOW:
            self.c.closed_slow += 1
        elif reason == CLOSE_STALLED:
            self.c.closed_stalled += 1
        elif reason == CLOSE_OVERFLOW:
            self.c.closed_overflow += 1
        elif reason == CLOSE_ERROR:
            self.c.closed_error += 1
        elif reason == CLOSE_SHUTDOWN:
            self.c.closed_shutdown += 1
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
        if conn.fd >= 0 and self.uring:
            self._ring_close(conn)
            conn.sock.close()
            conn.fd = -1
        elif conn.fd >= 0:
            if conn.tx_length:                  # one last try, without waiting
                send(conn.fd, conn.tx, conn.tx_length, MSG_NOSIGNAL)
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, conn.fd, NULL)
            if self.polling:
                self.closing.append(conn)       # events of this batch may still name it
            conn.sock.close()
            conn.fd = -1
        elif conn.transport is not None:
            conn.transport.close()              # sends what it buffered, then closes
        conn.reading = conn.writing = False
        free(conn.rx)
        free(conn.tx)
        conn.rx = conn.tx = NULL
        conn.rx_length = conn.rx_capacity = conn.tx_length = conn.tx_capacity = 0
        if self.on_close is not None:
            try:
                self.on_close(conn.peer)
            except Exception:
                logger.exception("connection-closed callback failed")
        return 0

    # -- the io_uring backend ---------------------------------------------------------------
    # A request carries its connection (_ring_id) and holds a reference to it until its last
    # completion, so the connection outlives whatever the kernel still does for it.
    cdef xr_sqe* _ring_sqe(self) except NULL:
        cdef xr_sqe* sqe = xr_get_sqe(&self.ring)
        if sqe == NULL:                         # the queue is full: hand it over first
            self._ring_submit()
            sqe = xr_get_sqe(&self.ring)
            if sqe == NULL:
                raise MemoryError("io_uring submission queue full")
        return sqe

    cdef int _ring_submit(self) except -1:
        cdef int err = xr_submit(&self.ring, 0)
        if err < 0:
            # EBUSY/EAGAIN: completions must be reaped first (the next poll does); what was
            # not taken stays queued.
            self.c.ring_submit_errors += 1
        return 0

    cdef int _ring_kick(self) except -1:
        """Outside ``poll`` (deferred answers, notifications, the sweep) submit at once;
        inside, the whole round is submitted together at its end."""
        if not self.polling:
            self._ring_submit()
        return 0

    cdef int _ring_arm(self, TcpConnection conn) except -1:
        """A multishot receive: every arrival completes into a buffer of the kernel's pick."""
        cdef xr_sqe* sqe = self._ring_sqe()
        xr_prep_recv_multishot(sqe, conn.fd, conn.slot,
                               _ring_id(conn, OP_RECV))
        conn.armed = True
        conn.ring_ops += 1
        self.ring_ops += 1
        Py_INCREF(conn)
        return self._ring_kick()

    cdef int _ring_cancel(self, TcpConnection conn, int op) except -1:
        xr_prep_cancel(self._ring_sqe(), _ring_id(conn, op))
        return self._ring_kick()

    cdef int _ring_send(self, TcpConnection conn) except -1:
        """Send what collected in tx: it becomes the flight, tx takes the old flight's buffer."""
        cdef uint8_t* buffer = conn.flight
        cdef Py_ssize_t capacity = conn.flight_capacity
        cdef xr_sqe* sqe = self._ring_sqe()
        conn.flight, conn.flight_capacity = conn.tx, conn.tx_capacity
        conn.flight_length, conn.flight_offset = conn.tx_length, 0
        conn.tx, conn.tx_capacity, conn.tx_length = buffer, capacity, 0
        xr_prep_send(sqe, conn.fd, conn.slot, conn.flight, <uint32_t>conn.flight_length,
                     MSG_NOSIGNAL, _ring_id(conn, OP_SEND))
        conn.ring_ops += 1
        self.ring_ops += 1
        Py_INCREF(conn)
        if not conn.writing:
            conn.writing = True
            conn.stalled_since = conn.last_activity
        return self._ring_kick()

    cdef int _ring_release(self, TcpConnection conn) except -1:
        """A request's last completion: drop its reference (and a closed one's buffer)."""
        conn.ring_ops -= 1
        self.ring_ops -= 1
        if conn.ring_ops == 0 and conn.closed:
            free(conn.flight)
            conn.flight = NULL
            conn.flight_length = conn.flight_offset = conn.flight_capacity = 0
        Py_DECREF(conn)
        return 0

    cdef Py_ssize_t _ring_reap(self) except -1:
        """Handle the completions there are now (the ones they cause wait for the next round)."""
        cdef uint32_t head = xr_cq_head(&self.ring), tail = xr_cq_tail(&self.ring)
        cdef const xr_cqe* cqe
        cdef uint64_t user_data
        cdef int res
        cdef uint32_t flags
        cdef TcpConnection conn
        cdef Py_ssize_t n = 0
        while head != tail:
            cqe = xr_cqe_at(&self.ring, head)
            user_data, res, flags = cqe.user_data, cqe.res, cqe.flags
            head += 1
            if head != tail:                    # the next one's state is cold (100s of conns)
                _prefetch_connection(_ring_connection(xr_cqe_at(&self.ring, head).user_data))
            xr_cq_advance(&self.ring, head)     # (a buffer is ours until we recycle it)
            n += 1
            if user_data == 0:                  # a cancel's own completion
                continue
            conn = <TcpConnection>_ring_connection(user_data)
            try:
                self._ring_complete(conn, <int>(user_data & 3), res, flags)
            except Exception:
                self.c.handler_errors += 1
                logger.exception("CoAP-over-TCP connection %s failed", conn.peer)
        return n

    cdef int _ring_complete(self, TcpConnection conn, int op, int res,
                            uint32_t flags) except -1:
        cdef bint last = True
        cdef uint16_t bid
        cdef const uint8_t* data
        cdef int finished
        if op == OP_SEND:
            try:
                if conn.closed:
                    pass
                elif res < 0:
                    if res != -ECANCELED:
                        self.c.send_errors += 1
                        self._close(conn, CLOSE_ERROR)
                else:
                    conn.flight_offset += res
                    conn.last_activity = self.now
                    if res > 0:
                        conn.stalled_since = conn.last_activity
                    if conn.flight_offset < conn.flight_length:
                        # A short send: the rest goes now, and this reference goes with it.
                        xr_prep_send(self._ring_sqe(), conn.fd, conn.slot,
                                     conn.flight + conn.flight_offset,
                                     <uint32_t>(conn.flight_length - conn.flight_offset),
                                     MSG_NOSIGNAL, _ring_id(conn, OP_SEND))
                        last = False
                        return self._ring_kick()
                    conn.flight_length = conn.flight_offset = 0
                    if conn.tx_length:
                        self._ring_send(conn)
                    else:
                        conn.writing = False
                        conn.stalled_since = 0
                    if _unsent(conn) <= self.max_pending // 8:
                        self._pause(conn, False)
            finally:
                if last:
                    self._ring_release(conn)
            return 0
        # OP_RECV: data, the peer's FIN (0), an error, or the end of the multishot request
        last = not (flags & XR_CQE_F_MORE)
        if last:
            conn.armed = False
        try:
            if flags & XR_CQE_F_BUFFER:
                bid = <uint16_t>(flags >> XR_CQE_BUFFER_SHIFT)
                data = xr_buf_data(&self.ring, bid, <uint32_t>max(res, 0), flags, &finished)
                try:
                    if data == NULL:            # not where the kernel said: never expected
                        self.c.recv_errors += 1
                        self._close(conn, CLOSE_ERROR)
                    elif res > 0 and not conn.closed:
                        self._received(conn, data, res)
                finally:
                    if finished:
                        xr_buf_recycle(&self.ring, bid)
            elif conn.closed or res == -ECANCELED:
                pass
            elif res == 0:
                self._close(conn, CLOSE_PEER)   # FIN: nothing more will come
            elif res == -ENOBUFS:
                pass                            # all buffers taken this round: armed again
            elif res < 0:
                self.c.recv_errors += 1
                self._close(conn, CLOSE_ERROR)
        finally:
            if last:
                # The kernel ends a multishot receive on its own too (no buffer, a full
                # completion queue): while we still read, arm it again.
                if not conn.closed and conn.reading and res != 0:
                    self.c.ring_rearms += 1
                    self._ring_arm(conn)
                self._ring_release(conn)
        return 0

    cdef int _ring_close(self, TcpConnection conn) except -1:
        """End the connection's requests before its socket closes. Bytes queued behind a send
        in flight get one last try, as with epoll, if that send has gone out."""
        cdef uint64_t send_id = _ring_id(conn, OP_SEND)
        cdef int res = 0
        cdef Py_ssize_t rest = conn.flight_length - conn.flight_offset
        if conn.armed:
            xr_prep_cancel(self._ring_sqe(), _ring_id(conn, OP_RECV))
        if conn.flight_length:
            if conn.tx_length:
                xr_submit(&self.ring, 0)        # the flight is issued, a cancel too
                if xr_cq_find(&self.ring, send_id, &res) and res == rest:
                    send(conn.fd, conn.tx, conn.tx_length, MSG_NOSIGNAL)
            xr_prep_cancel(self._ring_sqe(), send_id)   # a peer that does not read
        # Every prepared request naming this descriptor goes in before it is closed (and
        # its number possibly reused by the next accept); requests under way keep the file.
        self._ring_submit()
        if conn.slot >= 0:
            xr_file_remove(&self.ring, conn.slot)
            conn.slot = -1
        return 0

# CoAP message codec (RFC 7252 section 3), C level.
#
# parse_view() reads a datagram into a MessageView that points into the caller's buffer: no
# Python objects, no allocation. The Writer functions build a message into a caller's buffer.
# The Python-level Message class (in _codec.pyx) is built on top of both.

from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
    MAX_OPTIONS = 64            # more options than this in one message: format error
    MAX_TOKEN_LENGTH = 8

cdef enum MessageType:
    CON = 0
    NON = 1
    ACK = 2
    RST = 3

cdef enum ParseResult:
    PARSE_OK = 0
    PARSE_IGNORE = 1            # shorter than a header or unknown version: silently ignored (§3)
    PARSE_FORMAT_ERROR = 2      # §4.2/§4.3: reject a CON with RST, drop anything else

cdef enum OptionProblem:
    PROBLEM_BAD_CRITICAL = 1    # unrecognised critical option (§5.4.1): 4.02 Bad Option
    PROBLEM_PROXY = 2           # Proxy-Uri / Proxy-Scheme on a non-proxy (§5.7.2): 5.05

cdef struct OptionView:
    uint16_t number
    uint16_t length
    const uint8_t* value

cdef struct MessageView:
    uint8_t type
    uint8_t code
    uint16_t mid
    uint8_t token_length
    const uint8_t* token
    int option_count
    OptionView options[MAX_OPTIONS]
    const uint8_t* payload
    Py_ssize_t payload_length
    uint32_t problems
    uint16_t bad_option         # number of the first option behind PROBLEM_BAD_CRITICAL

cdef struct Writer:
    uint8_t* start
    uint8_t* pos
    uint8_t* end
    uint16_t last_option
    bint overflow

cdef int parse_view(const uint8_t* data, Py_ssize_t length, MessageView* view) noexcept nogil
cdef uint32_t option_uint(const OptionView* option) noexcept nogil

cdef void writer_init(Writer* w, uint8_t* buffer, Py_ssize_t capacity) noexcept nogil
cdef void write_header(Writer* w, int type, int code, uint16_t mid,
                       const uint8_t* token, int token_length) noexcept nogil
cdef void write_option(Writer* w, uint16_t number, const uint8_t* value,
                       Py_ssize_t length) noexcept nogil
cdef void write_uint_option(Writer* w, uint16_t number, uint32_t value) noexcept nogil
cdef void write_payload(Writer* w, const uint8_t* payload, Py_ssize_t length) noexcept nogil
cdef Py_ssize_t writer_length(const Writer* w) noexcept nogil

cdef class Message:
    cdef public int type
    cdef public int code
    cdef public int mid
    cdef public bytes token
    cdef public list options
    cdef public bytes payload
    cdef readonly unsigned int problems

cdef Message message_from_view(const MessageView* view)

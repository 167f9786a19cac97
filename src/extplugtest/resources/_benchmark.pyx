"""The C fast path of ``/benchmark`` (Californium ``Benchmark`` resource, inventory §2.1).

It answers the benchmark's common requests, POST or GET with an optional ``rlen`` query and
Accept text/plain, without creating a single Python object. Everything else (observe, ``ack``,
other queries, Accept mismatch, block-wise, the disabled resource) falls through to the Python
resource in benchmark.py, which shares the payload rule below.
"""

from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memcmp, memcpy, memset

from extplugtest.coap._codec cimport (
    MessageView, OptionView, Writer, option_uint, write_header, write_option, writer_length,
)

DEF MAX_RLEN_DIGITS = 4     # the fast path takes rlen=0..9999; larger goes to Python
DEF GET = 1
DEF POST = 2
DEF CHANGED = 0x44           # 2.04
DEF CONTENT = 0x45           # 2.05

cdef const char* POST_TEXT = b"hello benchmark"
cdef const char* OBSERVE_PREFIX = b"hello observe "


cdef Py_ssize_t _build_payload(uint8_t* out, bint get, int nnn, Py_ssize_t rlen) noexcept nogil:
    """Write the payload into *out* (room for max(rlen, 17) bytes); returns its length.

    rlen 0 keeps the text as it is; otherwise it is cut or padded with '*' to rlen bytes."""
    cdef Py_ssize_t length
    if get:
        memcpy(out, OBSERVE_PREFIX, 14)
        out[14] = <uint8_t>(48 + (nnn // 100) % 10)
        out[15] = <uint8_t>(48 + (nnn // 10) % 10)
        out[16] = <uint8_t>(48 + nnn % 10)
        length = 17
    else:
        memcpy(out, POST_TEXT, 15)
        length = 15
    if rlen == 0:
        return length
    if rlen > length:
        memset(out + length, 42, rlen - length)   # '*'
    return rlen


def benchmark_payload(bint get, int nnn, Py_ssize_t rlen) -> bytes:
    """The payload of a benchmark response (shared with the Python resource)."""
    if rlen < 0:  # (the caller checked it against COAP.MAX_RESOURCE_BODY_SIZE)
        raise ValueError("rlen out of range")
    cdef bytearray out = bytearray(max(rlen, 17))
    cdef uint8_t* raw = out
    return bytes(out[:_build_payload(raw, get, nnn, rlen)])


cdef inline int _parse_rlen(const OptionView* option) noexcept nogil:
    """The value of a 'rlen=<digits>' query, or -1 for anything else."""
    cdef int value = 0
    cdef int i
    if (option.length < 6 or option.length > 5 + MAX_RLEN_DIGITS
            or memcmp(option.value, b"rlen=", 5) != 0):
        return -1
    for i in range(5, option.length):
        if option.value[i] < 48 or option.value[i] > 57:
            return -1
        value = value * 10 + (option.value[i] - 48)
    return value


cdef class BenchmarkFastPath(FastResource):
    def __cinit__(self):
        self.enabled = False
        self.nnn = 0
        self.max_body = 8192

    @property
    def answered_count(self) -> int:
        return self.answered

    cdef Py_ssize_t respond(self, const MessageView* request, Writer* out, int response_type,
                            uint16_t response_mid, Py_ssize_t max_payload) noexcept:
        cdef int i, rlen = 0, segments = 0
        cdef const OptionView* option
        cdef Py_ssize_t length
        if not self.enabled or (request.code != GET and request.code != POST):
            return 0
        for i in range(request.option_count):
            option = &request.options[i]
            if option.number == 11:                     # Uri-Path
                segments += 1
                if option.length != 9 or memcmp(option.value, b"benchmark", 9) != 0:
                    return 0
            elif option.number == 15:                   # Uri-Query
                rlen = _parse_rlen(option)
                if rlen < 0:
                    return 0
            elif option.number == 17:                   # Accept
                if option_uint(option) != 0:
                    return 0
            elif option.number not in (3, 7, 12, 60):   # Uri-Host/Port, Content-Format, Size1
                return 0
        # above COAP.MAX_RESOURCE_BODY_SIZE: Python answers 4.02
        if segments != 1 or rlen > self.max_body or max(rlen, 17) > max_payload:
            return 0
        write_header(out, response_type, CONTENT if request.code == GET else CHANGED,
                     response_mid, request.token, request.token_length)
        write_option(out, 12, NULL, 0)                  # Content-Format text/plain
        if out.overflow or out.end - out.pos < 1 + max(rlen, 17):
            return 0
        out.pos[0] = 0xFF
        length = _build_payload(out.pos + 1, request.code == GET, self.nnn, rlen)
        out.pos += 1 + length
        self.answered += 1
        return writer_length(out)

# cython: freethreading_compatible = False
"""CoAP message codec (RFC 7252 section 3).

``parse_view`` and the ``write_*`` functions are the C-level core used on the per-datagram path
(see _codec.pxd). ``Message`` is the Python-level message that resource handlers see; it is
built from a view only when a datagram leaves the fast path.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

# Option formats (RFC 7252 section 3.2).
FORMAT_EMPTY = 0
FORMAT_OPAQUE = 1
FORMAT_UINT = 2
FORMAT_STRING = 3

cdef struct OptionSpec:
    uint16_t number
    uint8_t format
    uint16_t min_length
    uint16_t max_length
    bint repeatable

# The option registry: (number, name, format, min length, max length, repeatable).
# RFC 7252 §5.10, RFC 7641 (Observe), RFC 7959 (Block, Size2), RFC 7967 (No-Response),
# RFC 9175 (Echo, Request-Tag), RFC 8768 (Hop-Limit).
_REGISTRY = (
    (1, "If-Match", FORMAT_OPAQUE, 0, 8, True),
    (3, "Uri-Host", FORMAT_STRING, 1, 255, False),
    (4, "ETag", FORMAT_OPAQUE, 1, 8, True),
    (5, "If-None-Match", FORMAT_EMPTY, 0, 0, False),
    (6, "Observe", FORMAT_UINT, 0, 3, False),
    (7, "Uri-Port", FORMAT_UINT, 0, 2, False),
    (8, "Location-Path", FORMAT_STRING, 0, 255, True),
    (11, "Uri-Path", FORMAT_STRING, 0, 255, True),
    (12, "Content-Format", FORMAT_UINT, 0, 2, False),
    (14, "Max-Age", FORMAT_UINT, 0, 4, False),
    (15, "Uri-Query", FORMAT_STRING, 0, 255, True),
    (16, "Hop-Limit", FORMAT_UINT, 1, 1, False),
    (17, "Accept", FORMAT_UINT, 0, 2, False),
    (20, "Location-Query", FORMAT_STRING, 0, 255, True),
    (23, "Block2", FORMAT_UINT, 0, 3, False),
    (27, "Block1", FORMAT_UINT, 0, 3, False),
    (28, "Size2", FORMAT_UINT, 0, 4, False),
    (35, "Proxy-Uri", FORMAT_STRING, 1, 1034, False),
    (39, "Proxy-Scheme", FORMAT_STRING, 1, 255, False),
    (60, "Size1", FORMAT_UINT, 0, 4, False),
    (252, "Echo", FORMAT_OPAQUE, 1, 40, False),
    (258, "No-Response", FORMAT_UINT, 0, 1, False),
    (292, "Request-Tag", FORMAT_OPAQUE, 0, 8, True),
)

#: number -> name, for printing and for users of the API.
OPTION_NAMES = {entry[0]: entry[1] for entry in _REGISTRY}
#: name -> number.
OPTION_NUMBERS = {entry[1]: entry[0] for entry in _REGISTRY}
#: number -> format (FORMAT_*).
OPTION_FORMATS = {entry[0]: entry[2] for entry in _REGISTRY}

DEF REGISTRY_SIZE = 23
cdef OptionSpec SPECS[REGISTRY_SIZE]
cdef uint8_t SMALL_INDEX[64]      # number < 64 -> index into SPECS + 1 (0: unknown)

cdef void _load_registry():
    memset(SMALL_INDEX, 0, sizeof(SMALL_INDEX))
    for i, entry in enumerate(_REGISTRY):
        SPECS[i].number = entry[0]
        SPECS[i].format = entry[2]
        SPECS[i].min_length = entry[3]
        SPECS[i].max_length = entry[4]
        SPECS[i].repeatable = entry[5]
        if entry[0] < 64:
            SMALL_INDEX[entry[0]] = i + 1

assert len(_REGISTRY) == REGISTRY_SIZE
_load_registry()

cdef inline const OptionSpec* find_spec(uint16_t number) noexcept nogil:
    cdef int i
    if number < 64:
        i = SMALL_INDEX[number]
        return &SPECS[i - 1] if i else NULL
    for i in range(REGISTRY_SIZE):
        if SPECS[i].number == number:
            return &SPECS[i]
    return NULL


cdef int parse_view(const uint8_t* data, Py_ssize_t length, MessageView* v) noexcept nogil:
    """Parse one datagram into *v*; see ParseResult. The view points into *data*."""
    cdef Py_ssize_t pos
    cdef uint32_t delta, olen, number = 0
    cdef uint8_t byte
    cdef int tkl
    cdef int last_number = -1
    cdef const OptionSpec* spec
    cdef bint drop
    v.option_count = 0
    v.problems = 0
    v.bad_option = 0
    v.payload = NULL
    v.payload_length = 0
    v.token_length = 0
    v.token = NULL
    if length < 4 or (data[0] >> 6) != 1:
        return PARSE_IGNORE
    v.type = (data[0] >> 4) & 3
    tkl = data[0] & 0x0F
    v.code = data[1]
    v.mid = (data[2] << 8) | data[3]
    if tkl > MAX_TOKEN_LENGTH or 4 + tkl > length:
        return PARSE_FORMAT_ERROR
    v.token = data + 4
    v.token_length = tkl
    if v.code == 0:
        # An Empty message has nothing after the 4-byte header (§4.1).
        return PARSE_OK if length == 4 else PARSE_FORMAT_ERROR
    pos = 4 + tkl
    while pos < length:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            if pos == length:
                return PARSE_FORMAT_ERROR      # payload marker without payload (§3)
            v.payload = data + pos
            v.payload_length = length - pos
            break
        delta = byte >> 4
        olen = byte & 0x0F
        if delta == 13:
            if pos + 1 > length:
                return PARSE_FORMAT_ERROR
            delta = data[pos] + 13
            pos += 1
        elif delta == 14:
            if pos + 2 > length:
                return PARSE_FORMAT_ERROR
            delta = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        elif delta == 15:
            return PARSE_FORMAT_ERROR
        if olen == 13:
            if pos + 1 > length:
                return PARSE_FORMAT_ERROR
            olen = data[pos] + 13
            pos += 1
        elif olen == 14:
            if pos + 2 > length:
                return PARSE_FORMAT_ERROR
            olen = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        elif olen == 15:
            return PARSE_FORMAT_ERROR
        if pos + olen > length:
            return PARSE_FORMAT_ERROR
        number += delta
        if number > 0xFFFF:
            return PARSE_FORMAT_ERROR
        # §5.4.1/§5.4.5: an unknown option, a known one with a length out of range, or a
        # second occurrence of a non-repeatable one is "unrecognised": critical (odd) ones
        # make the request a 4.02, elective ones are ignored.
        spec = find_spec(<uint16_t>number)
        drop = False
        if spec == NULL:
            drop = (number & 1) == 1
        elif (olen < spec.min_length or olen > spec.max_length
              or (not spec.repeatable and <int>number == last_number)):
            drop = True
        if drop:
            if number & 1:
                if not v.problems & PROBLEM_BAD_CRITICAL:
                    v.bad_option = <uint16_t>number
                v.problems |= PROBLEM_BAD_CRITICAL
        else:
            if number == 35 or number == 39:
                v.problems |= PROBLEM_PROXY
            if v.option_count == MAX_OPTIONS:
                return PARSE_FORMAT_ERROR
            v.options[v.option_count].number = <uint16_t>number
            v.options[v.option_count].length = <uint16_t>olen
            v.options[v.option_count].value = data + pos
            v.option_count += 1
        last_number = <int>number
        pos += olen
    return PARSE_OK


cdef uint32_t option_uint(const OptionView* option) noexcept nogil:
    cdef uint32_t value = 0
    cdef int i
    for i in range(option.length if option.length <= 4 else 4):
        value = (value << 8) | option.value[i]
    return value


cdef void writer_init(Writer* w, uint8_t* buffer, Py_ssize_t capacity) noexcept nogil:
    w.start = buffer
    w.pos = buffer
    w.end = buffer + capacity
    w.last_option = 0
    w.overflow = False


cdef inline bint _room(Writer* w, Py_ssize_t needed) noexcept nogil:
    if w.overflow or w.end - w.pos < needed:
        w.overflow = True
        return False
    return True


cdef void write_header(Writer* w, int type, int code, uint16_t mid,
                       const uint8_t* token, int token_length) noexcept nogil:
    if token_length > MAX_TOKEN_LENGTH or not _room(w, 4 + token_length):
        w.overflow = True
        return
    w.pos[0] = 0x40 | ((type & 3) << 4) | token_length
    w.pos[1] = <uint8_t>code
    w.pos[2] = mid >> 8
    w.pos[3] = mid & 0xFF
    if token_length:
        memcpy(w.pos + 4, token, token_length)
    w.pos += 4 + token_length
    w.last_option = 0


cdef inline uint8_t* _put_nibble_ext(uint8_t* p, uint32_t value) noexcept nogil:
    if value >= 269:
        value -= 269
        p[0] = value >> 8
        p[1] = value & 0xFF
        return p + 2
    if value >= 13:
        p[0] = value - 13
        return p + 1
    return p


cdef inline uint8_t _nibble(uint32_t value) noexcept nogil:
    return 14 if value >= 269 else (13 if value >= 13 else value)


cdef void write_option(Writer* w, uint16_t number, const uint8_t* value,
                       Py_ssize_t length) noexcept nogil:
    """Append one option; options must be written in ascending number order."""
    cdef uint32_t delta
    cdef uint8_t* p
    if number < w.last_option or length > 0xFFFF + 269 or not _room(w, 5 + length):
        w.overflow = True
        return
    delta = number - w.last_option
    p = w.pos
    p[0] = (_nibble(delta) << 4) | _nibble(<uint32_t>length)
    p = _put_nibble_ext(p + 1, delta)
    p = _put_nibble_ext(p, <uint32_t>length)
    if length:
        memcpy(p, value, length)
    w.pos = p + length
    w.last_option = number


cdef void write_uint_option(Writer* w, uint16_t number, uint32_t value) noexcept nogil:
    cdef uint8_t buf[4]
    cdef int n = 0
    if value > 0xFFFFFF:
        n = 4
    elif value > 0xFFFF:
        n = 3
    elif value > 0xFF:
        n = 2
    elif value > 0:
        n = 1
    cdef int i
    for i in range(n):
        buf[i] = (value >> (8 * (n - 1 - i))) & 0xFF
    write_option(w, number, buf, n)


cdef void write_payload(Writer* w, const uint8_t* payload, Py_ssize_t length) noexcept nogil:
    if length == 0:
        return
    if not _room(w, 1 + length):
        return
    w.pos[0] = 0xFF
    memcpy(w.pos + 1, payload, length)
    w.pos += 1 + length


cdef Py_ssize_t writer_length(const Writer* w) noexcept nogil:
    return -1 if w.overflow else w.pos - w.start


# ---------------------------------------------------------------------------------------------
# Python level


class MessageFormatError(ValueError):
    """A datagram that is not a well-formed CoAP message (RFC 7252 section 3)."""


def encode_uint(value: int) -> bytes:
    """Minimal big-endian encoding of an option uint (zero is the empty string)."""
    if value < 0:
        raise ValueError("option value must not be negative")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


cdef bytes _option_bytes(int number, object value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int):
        return encode_uint(value)
    raise TypeError(f"option {number}: cannot encode {type(value).__name__}")


cdef Message message_from_view(const MessageView* view):
    cdef Message msg = Message.__new__(Message)
    cdef int i
    cdef list options = []
    msg.type = view.type
    msg.code = view.code
    msg.mid = view.mid
    msg.token = PyBytes_FromStringAndSize(<const char*>view.token, view.token_length)
    for i in range(view.option_count):
        options.append((view.options[i].number,
                        PyBytes_FromStringAndSize(<const char*>view.options[i].value,
                                                  view.options[i].length)))
    msg.options = options
    msg.payload = PyBytes_FromStringAndSize(<const char*>view.payload, view.payload_length)
    msg.problems = view.problems
    return msg


def parse(data) -> Message:
    """Parse a datagram; raises MessageFormatError for anything but a well-formed message."""
    cdef const uint8_t[:] buf = data
    cdef MessageView view
    cdef int result
    if buf.shape[0] == 0:
        raise MessageFormatError("empty datagram")
    result = parse_view(&buf[0], buf.shape[0], &view)
    if result == PARSE_IGNORE:
        raise MessageFormatError("not a CoAP version 1 message")
    if result == PARSE_FORMAT_ERROR:
        raise MessageFormatError("message format error")
    return message_from_view(&view)


CODE_NAMES = {
    0: "EMPTY", 1: "GET", 2: "POST", 3: "PUT", 4: "DELETE", 5: "FETCH", 6: "PATCH", 7: "IPATCH",
}
TYPE_NAMES = ("CON", "NON", "ACK", "RST")


def code_text(int code) -> str:
    """'2.05' style text of a code."""
    return f"{code >> 5}.{code & 0x1F:02d}"


cdef class Message:
    """A CoAP message as resource handlers see it.

    ``options`` is a list of ``(number, bytes)`` in ascending number order (repeatable options
    keep their order); use the helpers below rather than editing it by hand.
    """

    def __init__(self, int type=CON, int code=0, int mid=0, bytes token=b"",
                 list options=None, bytes payload=b""):
        self.type = type
        self.code = code
        self.mid = mid
        self.token = token
        self.options = [] if options is None else options
        self.payload = payload
        self.problems = 0

    # -- options ----------------------------------------------------------------------------
    def option(self, int number):
        """The first value of an option, or None."""
        for n, value in self.options:
            if n == number:
                return value
        return None

    def option_values(self, int number) -> list:
        return [value for n, value in self.options if n == number]

    def has_option(self, int number) -> bool:
        for n, _ in self.options:
            if n == number:
                return True
        return False

    def uint_option(self, int number):
        value = self.option(number)
        return None if value is None else int.from_bytes(value, "big")

    def add_option(self, int number, value) -> Message:
        """Append an option after existing ones with the same or a lower number."""
        cdef bytes encoded = _option_bytes(number, value)
        cdef Py_ssize_t i = len(self.options)
        while i > 0 and self.options[i - 1][0] > number:
            i -= 1
        self.options.insert(i, (number, encoded))
        return self

    def set_option(self, int number, value) -> Message:
        """Replace every occurrence of an option by one value."""
        self.remove_option(number)
        return self.add_option(number, value)

    def remove_option(self, int number) -> Message:
        self.options = [entry for entry in self.options if entry[0] != number]
        return self

    # -- common options ---------------------------------------------------------------------
    @property
    def uri_path(self) -> str:
        return "/".join(v.decode("utf-8", "replace") for v in self.option_values(11))

    @property
    def uri_path_segments(self) -> list:
        return [v.decode("utf-8", "replace") for v in self.option_values(11)]

    @property
    def uri_query(self) -> list:
        return [v.decode("utf-8", "replace") for v in self.option_values(15)]

    @property
    def content_format(self):
        return self.uint_option(12)

    @property
    def accept(self):
        return self.uint_option(17)

    @property
    def observe(self):
        return self.uint_option(6)

    @property
    def max_age(self):
        return self.uint_option(14)

    @property
    def is_request(self) -> bool:
        return 1 <= self.code <= 31

    @property
    def is_response(self) -> bool:
        return self.code >= 64

    @property
    def is_empty(self) -> bool:
        return self.code == 0

    # -- wire -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise; raises ValueError for a token longer than 8 bytes."""
        cdef Py_ssize_t size = 5 + len(self.token) + len(self.payload)
        cdef Writer w
        cdef bytes value
        cdef const uint8_t* raw
        cdef int number
        if len(self.token) > MAX_TOKEN_LENGTH:
            raise ValueError("token longer than 8 bytes")
        for entry in self.options:
            size += 5 + len(entry[1])
        out = PyBytes_FromStringAndSize(NULL, size)
        writer_init(&w, <uint8_t*>PyBytes_AS_STRING(out), size)
        raw = self.token
        write_header(&w, self.type, self.code, self.mid & 0xFFFF, raw, len(self.token))
        for number, value in sorted(self.options, key=_option_number):
            if not 0 <= number <= 0xFFFF:
                raise ValueError(f"option number {number} out of range")
            raw = value
            write_option(&w, number, raw, len(value))
        raw = self.payload
        write_payload(&w, raw, len(self.payload))
        if w.overflow:
            raise ValueError("message does not fit")
        return out[:writer_length(&w)]

    def __repr__(self) -> str:
        kind = TYPE_NAMES[self.type & 3]
        if self.code < 32:
            code = CODE_NAMES.get(self.code, code_text(self.code))
        else:
            code = code_text(self.code)
        opts = ", ".join(f"{OPTION_NAMES.get(n, n)}={v!r}" for n, v in self.options)
        return (f"<Message {kind} {code} MID={self.mid} Token={self.token.hex().upper()} "
                f"[{opts}] payload={len(self.payload)} bytes>")


def _option_number(entry):
    return entry[0]

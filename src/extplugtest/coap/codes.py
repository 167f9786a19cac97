"""CoAP codes, message types, option numbers and content formats (RFC 7252 §12)."""

from enum import IntEnum


class NumberEnum(IntEnum):
    """str() is the number, as IntEnum's is from Python 3.11 on (3.10 gave "Class.NAME"): link
    attributes and logs print these with str()."""

    __str__ = int.__repr__


class Type(NumberEnum):
    CON = 0
    NON = 1
    ACK = 2
    RST = 3


def code(cls: int, detail: int) -> int:
    return (cls << 5) | detail


class Code(NumberEnum):
    EMPTY = 0
    GET = 1
    POST = 2
    PUT = 3
    DELETE = 4
    FETCH = 5
    PATCH = 6
    IPATCH = 7
    CREATED = code(2, 1)
    DELETED = code(2, 2)
    VALID = code(2, 3)
    CHANGED = code(2, 4)
    CONTENT = code(2, 5)
    CONTINUE = code(2, 31)
    BAD_REQUEST = code(4, 0)
    UNAUTHORIZED = code(4, 1)
    BAD_OPTION = code(4, 2)
    FORBIDDEN = code(4, 3)
    NOT_FOUND = code(4, 4)
    METHOD_NOT_ALLOWED = code(4, 5)
    NOT_ACCEPTABLE = code(4, 6)
    REQUEST_ENTITY_INCOMPLETE = code(4, 8)
    CONFLICT = code(4, 9)
    PRECONDITION_FAILED = code(4, 12)
    REQUEST_ENTITY_TOO_LARGE = code(4, 13)
    UNSUPPORTED_CONTENT_FORMAT = code(4, 15)
    INTERNAL_SERVER_ERROR = code(5, 0)
    NOT_IMPLEMENTED = code(5, 1)
    BAD_GATEWAY = code(5, 2)
    SERVICE_UNAVAILABLE = code(5, 3)
    GATEWAY_TIMEOUT = code(5, 4)
    PROXYING_NOT_SUPPORTED = code(5, 5)

    @property
    def text(self) -> str:
        return f"{self >> 5}.{self & 0x1F:02d}"


class Option(NumberEnum):
    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    IF_NONE_MATCH = 5
    OBSERVE = 6
    URI_PORT = 7
    LOCATION_PATH = 8
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    HOP_LIMIT = 16
    ACCEPT = 17
    LOCATION_QUERY = 20
    BLOCK2 = 23
    BLOCK1 = 27
    SIZE2 = 28
    PROXY_URI = 35
    PROXY_SCHEME = 39
    SIZE1 = 60
    ECHO = 252
    NO_RESPONSE = 258
    REQUEST_TAG = 292


class ContentFormat(NumberEnum):
    TEXT_PLAIN = 0
    LINK_FORMAT = 40
    XML = 41
    OCTET_STREAM = 42
    EXI = 47
    JSON = 50
    CBOR = 60


#: MIME type names as Californium prints them (MediaTypeRegistry; IANA CoAP Content-Formats).
MIME_TYPES = {
    0: "text/plain",
    16: "application/cose; cose-type=cose-encrypt0",
    17: "application/cose; cose-type=cose-mac0",
    18: "application/cose; cose-type=cose-sign1",
    21: "image/gif",
    22: "image/jpeg",
    23: "image/png",
    40: "application/link-format",
    41: "application/xml",
    42: "application/octet-stream",
    47: "application/exi",
    50: "application/json",
    51: "application/json-patch+json",
    52: "application/merge-patch+json",
    60: "application/cbor",
    61: "application/cwt",
    62: "application/multipart-core",
    63: "application/cbor-seq",
    96: "application/cose; cose-type=cose-encrypt",
    97: "application/cose; cose-type=cose-mac",
    98: "application/cose; cose-type=cose-sign",
    101: "application/cose-key",
    102: "application/cose-key-set",
    110: "application/senml+json",
    111: "application/sensml+json",
    112: "application/senml+cbor",
    113: "application/sensml+cbor",
    114: "application/senml-exi",
    115: "application/sensml-exi",
    256: "application/coap-group+json",
    310: "application/senml+xml",
    311: "application/sensml+xml",
    320: "application/senml-etch+json",
    322: "application/senml-etch+cbor",
    432: "application/td+json",
    10000: "application/vnd.ocf+cbor",
    10001: "application/oscore",
    11050: "application/json; deflate",
    11060: "application/cbor; deflate",
    11542: "application/vnd.oma.lwm2m+tlv",
    11543: "application/vnd.oma.lwm2m+json",
    11544: "application/vnd.oma.lwm2m+cbor",
}


def mime_type(content_format: int) -> str:
    """The MIME type of a Content-Format, ``unknown/<n>`` for an unregistered one."""
    return MIME_TYPES.get(content_format, f"unknown/{content_format}")

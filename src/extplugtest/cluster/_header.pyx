# cython: freethreading_compatible = False
"""DTLS-CID cluster record header, cluster MAC and forward decision (see _header.pxd).

The C path is ``cluster_route`` (which node owns a datagram), ``cluster_encode*`` /
``cluster_write_header`` (prepend the header), ``cluster_decode`` (read it) and
``ClusterMac.sign``/``verify``: no Python objects, errors are CLUSTER_* results. The Python
API on top (``encode``, ``decode``, ``route``, ``ClusterMac.compute``) raises ``ClusterError``.

Byte layout as Californium codes it (inventory §5.2, §9.1; the README's field order is wrong):
type, port little-endian, address length, address, optional MAC, then the record.
"""

from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memcpy, memmove, memset
from cpython.buffer cimport PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from extplugtest._net cimport (
    AF_INET, AF_INET6, fill_sockaddr, address_tuple, get_bytes, sockaddr_in, sockaddr_in6, htons,
    ntohs,
)
from extplugtest.dtls._openssl cimport (
    OSSL_PARAM, OSSL_PARAM_construct_end, ERR_clear_error, OPENSSL_cleanse,
)

from extplugtest._openssl_init cimport extplugtest_openssl_init

extplugtest_openssl_init()  # before any other libcrypto call (csrc/openssl_init.h)

from collections import namedtuple
import time

cdef extern from "openssl/core_names.h" nogil:
    const char* OSSL_MAC_PARAM_DIGEST

cdef extern from "openssl/params.h" nogil:
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char* key, char* buf, size_t bsize)

cdef extern from "openssl/evp.h" nogil:
    EVP_MAC* EVP_MAC_fetch(void* libctx, const char* algorithm, const char* properties)
    EVP_MAC_CTX* EVP_MAC_CTX_new(EVP_MAC* mac)
    void EVP_MAC_CTX_free(EVP_MAC_CTX* ctx)
    int EVP_MAC_init(EVP_MAC_CTX* ctx, const unsigned char* key, size_t keylen,
                     const OSSL_PARAM* params)
    int EVP_MAC_update(EVP_MAC_CTX* ctx, const unsigned char* data, size_t datalen)
    int EVP_MAC_final(EVP_MAC_CTX* ctx, unsigned char* out, size_t* outl, size_t outsize)

cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void* a, const void* b, size_t length)

cdef enum:
    TLS12_CID = 25                  # RFC 9146 §3
    RECORD_HEADER_LENGTH = 13       # without the CID
    CID_OFFSET = 11                 # type, version, epoch, seq
    MAX_DIGEST_LENGTH = 64
    # §5.3: with more than 64 - (4 + n) record bytes, only the first and last 32 are MACed.
    MAC_RECORD_WINDOW = 64
    MAC_RECORD_PART = 32

# Fetched once per process, as _record.pyx does with its ciphers.
cdef EVP_MAC* _HMAC = EVP_MAC_fetch(NULL, b"HMAC", NULL)
if _HMAC == NULL:
    ERR_clear_error()
    raise ImportError("libcrypto offers no HMAC")

#: CLUSTER_* result -> short name.
RESULT_NAMES = {
    CLUSTER_OK: "ok",
    CLUSTER_NOT_CLUSTER: "not a cluster record",
    CLUSTER_TRUNCATED: "truncated header",
    CLUSTER_BAD_ADDRESS: "bad address length",
    CLUSTER_SHORT_RECORD: "carried record too short",
    CLUSTER_BAD_MAC: "cluster MAC mismatch",
    CLUSTER_NO_SPACE: "output buffer too small",
    CLUSTER_BAD_TYPE: "bad cluster record type",
    CLUSTER_CRYPTO: "libcrypto failure",
    CLUSTER_BAD_BATCH: "malformed batch",
}

#: A decoded cluster packet: type 62/63, the client address (host, port), the carried record,
#: and the MAC bytes (b"" without MAC).
ClusterPacket = namedtuple("ClusterPacket", "type address record mac")


class ClusterError(ValueError):
    """A cluster packet that cannot be decoded, encoded or authenticated; ``result`` is the
    CLUSTER_* code."""

    def __init__(self, result):
        self.result = result
        super().__init__(f"{RESULT_NAMES.get(result, 'unknown')} (CLUSTER result {result})")


# -- Header ---------------------------------------------------------------------------------

cdef Py_ssize_t cluster_header_length(int address_length, bint with_mac) noexcept nogil:
    return CLUSTER_ADDRESS_OFFSET + address_length + (CLUSTER_MAC_LENGTH if with_mac else 0)


cdef int cluster_decode(const uint8_t* data, Py_ssize_t length, bint with_mac,
                        ClusterView* out) noexcept nogil:
    """Read the header at *data*; *with_mac* says whether this node's cluster uses MACs (the
    MAC is only located here, ClusterMac.verify checks it)."""
    cdef Py_ssize_t header
    if length < 1 or (data[0] != CLUSTER_RECORD_INCOMING
                      and data[0] != CLUSTER_RECORD_OUTGOING):
        return CLUSTER_NOT_CLUSTER
    if length < CLUSTER_ADDRESS_OFFSET:
        return CLUSTER_TRUNCATED
    if data[3] != 4 and data[3] != 16:
        return CLUSTER_BAD_ADDRESS
    header = cluster_header_length(data[3], with_mac)
    if length < header:
        return CLUSTER_TRUNCATED
    if length - header < CLUSTER_MIN_RECORD_LENGTH:
        return CLUSTER_SHORT_RECORD
    out.type = data[0]
    out.port = data[1] | (data[2] << 8)
    out.address_length = data[3]
    out.address = data + CLUSTER_ADDRESS_OFFSET
    out.mac_offset = CLUSTER_ADDRESS_OFFSET + data[3]
    out.mac = data + out.mac_offset if with_mac else NULL
    out.record = data + header
    out.record_length = length - header
    return CLUSTER_OK


cdef Py_ssize_t cluster_write_header(uint8_t* out, Py_ssize_t capacity, uint8_t type,
                                     const uint8_t* address, int address_length,
                                     uint16_t port, bint with_mac) noexcept nogil:
    """Write the header to *out* (the MAC slot zeroed); returns its length or -CLUSTER_*.
    The record goes right behind it; ClusterMac.sign fills the MAC afterwards."""
    cdef Py_ssize_t header = cluster_header_length(address_length, with_mac)
    if type != CLUSTER_RECORD_INCOMING and type != CLUSTER_RECORD_OUTGOING:
        return -CLUSTER_BAD_TYPE
    if address_length != 4 and address_length != 16:
        return -CLUSTER_BAD_ADDRESS
    if capacity < header:
        return -CLUSTER_NO_SPACE
    out[0] = type
    out[1] = <uint8_t>port             # little-endian, as coded (§5.2)
    out[2] = <uint8_t>(port >> 8)
    out[3] = <uint8_t>address_length
    memcpy(out + CLUSTER_ADDRESS_OFFSET, address, address_length)
    if with_mac:
        memset(out + CLUSTER_ADDRESS_OFFSET + address_length, 0, CLUSTER_MAC_LENGTH)
    return header


cdef Py_ssize_t cluster_encode(uint8_t type, const uint8_t* address, int address_length,
                               uint16_t port, const uint8_t* record, Py_ssize_t record_length,
                               bint with_mac, uint8_t* out, Py_ssize_t capacity) noexcept nogil:
    """Header + record into *out*; returns the packet length or -CLUSTER_*. *record* may
    already sit at out + cluster_header_length(...) (zero copy) or overlap *out* otherwise."""
    cdef Py_ssize_t header = cluster_header_length(address_length, with_mac)
    cdef Py_ssize_t written
    if record_length < CLUSTER_MIN_RECORD_LENGTH:
        return -CLUSTER_SHORT_RECORD
    if capacity < header or capacity - header < record_length:
        return -CLUSTER_NO_SPACE
    # Move the record first: the header may overwrite where an overlapping record started.
    if record != out + header:
        memmove(out + header, record, record_length)
    written = cluster_write_header(out, capacity, type, address, address_length, port,
                                   with_mac)
    if written < 0:
        return written
    return header + record_length


cdef Py_ssize_t cluster_encode_sockaddr(uint8_t type, const sockaddr_storage* peer,
                                        const uint8_t* record, Py_ssize_t record_length,
                                        bint with_mac, uint8_t* out,
                                        Py_ssize_t capacity) noexcept nogil:
    """cluster_encode with the address and port of a sockaddr (AF_INET or AF_INET6)."""
    cdef const sockaddr_in* v4
    cdef const sockaddr_in6* v6
    if peer.ss_family == AF_INET:
        v4 = <const sockaddr_in*>peer
        return cluster_encode(type, <const uint8_t*>&v4.sin_addr, 4, ntohs(v4.sin_port),
                              record, record_length, with_mac, out, capacity)
    if peer.ss_family == AF_INET6:
        v6 = <const sockaddr_in6*>peer
        return cluster_encode(type, v6.sin6_addr.s6_addr, 16, ntohs(v6.sin6_port),
                              record, record_length, with_mac, out, capacity)
    return -CLUSTER_BAD_ADDRESS


cdef unsigned int cluster_view_sockaddr(const ClusterView* view,
                                        sockaddr_storage* out) noexcept nogil:
    """The client address of a decoded packet as a sockaddr; returns its length."""
    cdef sockaddr_in* v4
    cdef sockaddr_in6* v6
    memset(out, 0, sizeof(sockaddr_storage))
    if view.address_length == 4:
        v4 = <sockaddr_in*>out
        v4.sin_family = AF_INET
        v4.sin_port = htons(view.port)
        memcpy(&v4.sin_addr, view.address, 4)
        return sizeof(sockaddr_in)
    v6 = <sockaddr_in6*>out
    v6.sin6_family = AF_INET6
    v6.sin6_port = htons(view.port)
    memcpy(v6.sin6_addr.s6_addr, view.address, 16)
    return sizeof(sockaddr_in6)


# -- Forward decision (§5.5) -----------------------------------------------------------------

cdef int cluster_route(const uint8_t* datagram, Py_ssize_t length, int cid_length,
                       int own_node_id) noexcept nogil:
    """The node id owning *datagram* (CID byte 0 of its first record), or CLUSTER_ROUTE_LOCAL.

    Only a tls12_cid record with a complete header and epoch > 0 is routed (a CID record in
    epoch 0 or a cut header is invalid anyway, RFC 9146 §3, and the local record layer drops
    it without a cluster hop). Handshakes (no CID) stay on the node the balancer picked.
    """
    cdef int node
    if (cid_length <= 0 or length < RECORD_HEADER_LENGTH + cid_length
            or datagram[0] != TLS12_CID or (datagram[3] == 0 and datagram[4] == 0)):
        return CLUSTER_ROUTE_LOCAL
    node = datagram[CID_OFFSET]
    if node == (own_node_id & 0xFF):
        return CLUSTER_ROUTE_LOCAL
    return node


# -- Cluster MAC (§5.3) ----------------------------------------------------------------------

cdef int cluster_mac_compute(EVP_MAC_CTX* ctx, const uint8_t* packet, Py_ssize_t mac_offset,
                             const uint8_t* record, Py_ssize_t record_length,
                             uint8_t* mac_out) noexcept nogil:
    """The 8-byte cluster MAC into *mac_out*: HMAC (keyed ctx) over the header up to the MAC,
    then the record, or only its first and last 32 bytes when it has more than
    64 - mac_offset bytes (the two parts overlap below 64 bytes, as coded)."""
    cdef uint8_t digest[MAX_DIGEST_LENGTH]
    cdef size_t digest_length = 0
    cdef bint ok
    if record_length <= 0:
        return CLUSTER_SHORT_RECORD
    # A NULL key re-initialises with the key set in ClusterMac.__cinit__ (EVP_MAC_init(3)).
    ok = EVP_MAC_init(ctx, NULL, 0, NULL) == 1 and EVP_MAC_update(ctx, packet, mac_offset) == 1
    if ok and record_length > MAC_RECORD_WINDOW - mac_offset:
        ok = (EVP_MAC_update(ctx, record, MAC_RECORD_PART) == 1
              and EVP_MAC_update(ctx, record + record_length - MAC_RECORD_PART,
                                 MAC_RECORD_PART) == 1)
    elif ok:
        ok = EVP_MAC_update(ctx, record, record_length) == 1
    ok = ok and EVP_MAC_final(ctx, digest, &digest_length, MAX_DIGEST_LENGTH) == 1
    if not ok or digest_length < CLUSTER_MAC_LENGTH:
        ERR_clear_error()
        return CLUSTER_CRYPTO
    memcpy(mac_out, digest, CLUSTER_MAC_LENGTH)
    OPENSSL_cleanse(digest, MAX_DIGEST_LENGTH)
    return CLUSTER_OK


cdef class ClusterMac:
    """HMAC with one cluster MAC key (§5.3); *digest* is the PRF hash of the management
    channel's cipher suite: "SHA256" (the CCM, CCM_8 and *_SHA256 suites) or "SHA384".

    One instance per direction and node pair: the sender signs with its write key for the
    destination node, the receiver verifies with its read key for the sending node.
    """

    def __cinit__(self, key, str digest="SHA256"):
        cdef bytes digest_name = digest.upper().encode("ascii")
        cdef bytes key_bytes = bytes(key)
        cdef OSSL_PARAM params[2]
        if digest_name not in (b"SHA256", b"SHA384"):
            raise ValueError(f"unsupported cluster MAC digest {digest!r}")
        if not key_bytes:
            raise ValueError("empty cluster MAC key")
        self.digest = digest.upper()
        self.ctx = EVP_MAC_CTX_new(_HMAC)
        if self.ctx == NULL:
            raise MemoryError()
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                     PyBytes_AS_STRING(digest_name), 0)
        params[1] = OSSL_PARAM_construct_end()
        if EVP_MAC_init(self.ctx, <const unsigned char*>PyBytes_AS_STRING(key_bytes),
                        PyBytes_GET_SIZE(key_bytes), params) != 1:
            ERR_clear_error()
            raise ValueError("HMAC initialisation failed")

    def __dealloc__(self):
        if self.ctx != NULL:
            EVP_MAC_CTX_free(self.ctx)
            self.ctx = NULL

    cdef int sign(self, uint8_t* packet, Py_ssize_t length) noexcept nogil:
        """Fill the MAC slot of an encoded packet (header with MAC slot + record)."""
        cdef Py_ssize_t mac_offset
        cdef Py_ssize_t header
        if length < CLUSTER_ADDRESS_OFFSET:
            return CLUSTER_TRUNCATED
        mac_offset = CLUSTER_ADDRESS_OFFSET + packet[3]
        header = mac_offset + CLUSTER_MAC_LENGTH
        if length - header < 1:
            return CLUSTER_SHORT_RECORD
        self.signed_packets += 1
        return cluster_mac_compute(self.ctx, packet, mac_offset, packet + header,
                                   length - header, packet + mac_offset)

    cdef int verify(self, const ClusterView* view) noexcept nogil:
        """CLUSTER_OK if the MAC of a packet decoded with a MAC is right (constant time)."""
        cdef uint8_t expected[CLUSTER_MAC_LENGTH]
        cdef int status
        if view.mac == NULL:
            return CLUSTER_BAD_MAC
        status = cluster_mac_compute(self.ctx, view.mac - view.mac_offset, view.mac_offset,
                                     view.record, view.record_length, expected)
        if status != CLUSTER_OK:
            return status
        if CRYPTO_memcmp(expected, view.mac, CLUSTER_MAC_LENGTH) != 0:
            self.mac_failures += 1
            return CLUSTER_BAD_MAC
        self.verified_packets += 1
        return CLUSTER_OK

    def compute(self, packet) -> bytes:
        """The MAC an encoded packet (with MAC slot) should carry."""
        cdef bytearray copy = bytearray(packet)
        cdef int status
        status = self.sign(<uint8_t*>(<char*>copy), len(copy))
        self.signed_packets -= 1        # a query, not a signed packet
        if status != CLUSTER_OK:
            raise ClusterError(status)
        mac_offset = CLUSTER_ADDRESS_OFFSET + copy[3]
        return bytes(copy[mac_offset:mac_offset + CLUSTER_MAC_LENGTH])


# -- Python API (tests, management code, the non-hot paths) ----------------------------------

def encode(int type, address, record, ClusterMac mac=None) -> bytes:
    """A cluster packet: *type* 62/63, *address* the client's (host, port) with an IPv4 or
    IPv6 host, *record* the carried bytes; signed with *mac* if given."""
    cdef sockaddr_storage peer
    cdef Py_buffer buf
    cdef bint held
    cdef Py_ssize_t length
    cdef bytes out
    cdef int status
    if type != CLUSTER_RECORD_INCOMING and type != CLUSTER_RECORD_OUTGOING:
        raise ClusterError(CLUSTER_BAD_TYPE)
    fill_sockaddr(&peer, address)
    held = get_bytes(record, &buf)
    try:
        out = PyBytes_FromStringAndSize(NULL, CLUSTER_MAX_HEADER_LENGTH + buf.len)
        length = cluster_encode_sockaddr(<uint8_t>type, &peer, <const uint8_t*>buf.buf,
                                         buf.len, mac is not None,
                                         <uint8_t*>PyBytes_AS_STRING(out),
                                         PyBytes_GET_SIZE(out))
    finally:
        if held:
            PyBuffer_Release(&buf)
    if length < 0:
        raise ClusterError(-length)
    if mac is not None:
        status = mac.sign(<uint8_t*>PyBytes_AS_STRING(out), length)
        if status != CLUSTER_OK:
            raise ClusterError(status)
    return out[:length]


def decode(packet, ClusterMac mac=None, bint with_mac=False):
    """A ClusterPacket from *packet*; with *mac* the MAC is required and verified, with only
    *with_mac* it is located but not checked. Raises ClusterError."""
    cdef Py_buffer buf
    cdef bint held
    cdef ClusterView view
    cdef sockaddr_storage peer
    cdef int status
    held = get_bytes(packet, &buf)
    try:
        status = cluster_decode(<const uint8_t*>buf.buf, buf.len, with_mac or mac is not None,
                                &view)
        if status == CLUSTER_OK and mac is not None:
            status = mac.verify(&view)
        if status != CLUSTER_OK:
            raise ClusterError(status)
        cluster_view_sockaddr(&view, &peer)
        address = address_tuple(&peer)[:2]
        return ClusterPacket(
            view.type,
            address,
            (<const char*>view.record)[:view.record_length],
            (<const char*>view.mac)[:CLUSTER_MAC_LENGTH] if view.mac != NULL else b"",
        )
    finally:
        if held:
            PyBuffer_Release(&buf)


# -- Batches (our extension) ----------------------------------------------------------------

cdef int cluster_batch_next(const uint8_t* batch, Py_ssize_t length, Py_ssize_t* offset,
                            const uint8_t** packet, Py_ssize_t* packet_length) noexcept nogil:
    """The next packet of a batch datagram (type byte, then 2-byte length + packet, ...):
    1 with *packet*/*packet_length* set and *offset* advanced, 0 at the end, or
    -CLUSTER_BAD_BATCH (an empty packet, or a length beyond the datagram). Start with
    ``*offset = 1``."""
    cdef Py_ssize_t size
    if offset[0] == length:
        return 0
    if offset[0] + 2 > length:
        return -CLUSTER_BAD_BATCH
    size = (<Py_ssize_t>batch[offset[0]] << 8) | batch[offset[0] + 1]
    if size == 0 or offset[0] + 2 + size > length:
        return -CLUSTER_BAD_BATCH
    packet[0] = batch + offset[0] + 2
    packet_length[0] = size
    offset[0] += 2 + size
    return 1


def encode_batch(packets) -> bytes:
    """A batch datagram of *packets* (each 1..65535 bytes)."""
    out = bytearray([CLUSTER_BATCH])
    for packet in packets:
        packet = bytes(packet)
        if not 0 < len(packet) <= 0xFFFF:
            raise ClusterError(CLUSTER_BAD_BATCH)
        out += len(packet).to_bytes(2, "big") + packet
    return bytes(out)


def split_batch(datagram) -> list:
    """The packets of a batch datagram (cluster_batch_next); raises ClusterError."""
    cdef Py_buffer buf
    cdef bint held = get_bytes(datagram, &buf)
    cdef Py_ssize_t offset = 1, size
    cdef const uint8_t* packet
    cdef int status
    parts = []
    try:
        if buf.len < 1 or (<const uint8_t*>buf.buf)[0] != CLUSTER_BATCH:
            raise ClusterError(CLUSTER_BAD_BATCH)
        while True:  # bounded: every step consumes at least 3 bytes
            status = cluster_batch_next(<const uint8_t*>buf.buf, buf.len, &offset, &packet,
                                        &size)
            if status == 0:
                return parts
            if status < 0:
                raise ClusterError(-status)
            parts.append((<const char*>packet)[:size])
    finally:
        if held:
            PyBuffer_Release(&buf)


def route(datagram, int cid_length, int own_node_id) -> int:
    """cluster_route from Python: the owning node id, or CLUSTER_ROUTE_LOCAL (-1)."""
    cdef Py_buffer buf
    cdef bint held = get_bytes(datagram, &buf)
    try:
        return cluster_route(<const uint8_t*>buf.buf, buf.len, cid_length, own_node_id)
    finally:
        if held:
            PyBuffer_Release(&buf)


def measure_forward_path(datagram, int cid_length, int own_node_id, ClusterMac mac=None,
                         long iterations=100000) -> float:
    """Nanoseconds per datagram of the C forward path with no Python in the loop: route,
    encode (IPv4 client, MAC if given) and decode (+ verify) of *datagram*. For the
    per-datagram cost figure only; the loop runs without the GIL."""
    cdef Py_buffer buf
    cdef bint held = get_bytes(datagram, &buf)
    cdef uint8_t out[CLUSTER_MAX_HEADER_LENGTH + 2048]
    cdef uint8_t client[4]
    cdef ClusterView view
    cdef Py_ssize_t length = 0
    cdef long _i
    cdef long routed = 0
    cdef bint with_mac = mac is not None
    cdef double start
    client[0] = 192
    client[1] = 0
    client[2] = 2
    client[3] = 1
    try:
        if buf.len > 2048 or iterations <= 0:
            raise ValueError("datagram above 2048 bytes or no iterations")
        start = time.perf_counter()
        with nogil:
            for _i in range(iterations):
                if cluster_route(<const uint8_t*>buf.buf, buf.len, cid_length,
                                 own_node_id) == CLUSTER_ROUTE_LOCAL:
                    continue
                length = cluster_encode(CLUSTER_RECORD_INCOMING, client, 4, 40000,
                                        <const uint8_t*>buf.buf, buf.len, with_mac, out,
                                        sizeof(out))
                if length < 0:
                    break
                if with_mac:
                    mac.sign(out, length)
                if cluster_decode(out, length, with_mac, &view) != CLUSTER_OK:
                    break
                if with_mac and mac.verify(&view) != CLUSTER_OK:
                    break
                routed += 1
        elapsed = time.perf_counter() - start
    finally:
        if held:
            PyBuffer_Release(&buf)
    if routed != iterations and length >= 0:
        raise ValueError("the datagram is not routed to another node")
    return elapsed * 1e9 / iterations

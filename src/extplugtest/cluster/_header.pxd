# DTLS-CID cluster record header (inventory §5.2), its MAC (§5.3) and the forward decision
# (§5.5), C level.
#
# A cluster packet travels on the management socket between two nodes:
#
#   type(1) | port(2, LE) | n(1) | address(n = 4 or 16) | [mac(8)] | record
#
# 63 = IN  (forwarded: a client datagram to the node that owns its CID),
# 62 = OUT (backwarded: a record of the owner, to be sent by the receiving node).
# ClusterView points into the caller's packet: no Python objects, no allocation, errors are
# CLUSTER_* results.

from libc.stdint cimport uint8_t, uint16_t

from extplugtest._net cimport sockaddr_storage

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MAC:
        pass
    ctypedef struct EVP_MAC_CTX:
        pass

cpdef enum:
    CLUSTER_RECORD_INCOMING = 63    # "IN", forwarded client -> owner node
    CLUSTER_RECORD_OUTGOING = 62    # "OUT", backwarded owner -> receiving node
    CLUSTER_ADDRESS_OFFSET = 4      # type, port (2), address length
    CLUSTER_MAC_LENGTH = 8
    CLUSTER_MAX_HEADER_LENGTH = 28  # 4 + 16 (IPv6) + 8 (MAC)
    # A carried record must be longer than a record header plus a handshake header (13 + 12),
    # as the Java receiver checks (§5.2); shorter packets are dropped.
    CLUSTER_MIN_RECORD_LENGTH = 26
    CLUSTER_MAX_NODE_ID = 255       # the node id is CID byte 0 (§5.5)
    CLUSTER_ROUTE_LOCAL = -1        # cluster_route(): process the datagram on this node
    # Our extension: several cluster packets in one datagram, each behind a 2-byte big-endian
    # length (cluster/_router.pyx sends them to cut the per-datagram cost of forwarding).
    CLUSTER_BATCH = 64

cpdef enum:
    # Results of decoding, encoding and MAC checks.
    CLUSTER_OK = 0
    CLUSTER_NOT_CLUSTER = 1         # first byte neither 62 nor 63 (a management packet)
    CLUSTER_TRUNCATED = 2           # shorter than its header
    CLUSTER_BAD_ADDRESS = 3         # address length neither 4 nor 16
    CLUSTER_SHORT_RECORD = 4        # carried record not above 25 bytes
    CLUSTER_BAD_MAC = 5             # MAC does not match
    CLUSTER_NO_SPACE = 6            # output buffer too small
    CLUSTER_BAD_TYPE = 7            # encode: type neither 62 nor 63
    CLUSTER_CRYPTO = 8              # unexpected libcrypto failure
    CLUSTER_BAD_BATCH = 9           # a batch whose lengths do not add up to the datagram

cdef struct ClusterView:
    const uint8_t* address          # raw IPv4/IPv6 address, network byte order
    const uint8_t* mac              # NULL unless decoded with a MAC
    const uint8_t* record           # the carried datagram (IN) or record (OUT)
    Py_ssize_t record_length
    Py_ssize_t mac_offset           # 4 + n: the MAC input's header part ends here
    uint16_t port
    uint8_t type
    uint8_t address_length

cdef Py_ssize_t cluster_header_length(int address_length, bint with_mac) noexcept nogil
cdef int cluster_decode(const uint8_t* data, Py_ssize_t length, bint with_mac,
                        ClusterView* out) noexcept nogil
cdef Py_ssize_t cluster_write_header(uint8_t* out, Py_ssize_t capacity, uint8_t type,
                                     const uint8_t* address, int address_length,
                                     uint16_t port, bint with_mac) noexcept nogil
cdef Py_ssize_t cluster_encode(uint8_t type, const uint8_t* address, int address_length,
                               uint16_t port, const uint8_t* record, Py_ssize_t record_length,
                               bint with_mac, uint8_t* out, Py_ssize_t capacity) noexcept nogil
cdef Py_ssize_t cluster_encode_sockaddr(uint8_t type, const sockaddr_storage* peer,
                                        const uint8_t* record, Py_ssize_t record_length,
                                        bint with_mac, uint8_t* out,
                                        Py_ssize_t capacity) noexcept nogil
cdef unsigned int cluster_view_sockaddr(const ClusterView* view,
                                        sockaddr_storage* out) noexcept nogil
cdef int cluster_route(const uint8_t* datagram, Py_ssize_t length, int cid_length,
                       int own_node_id) noexcept nogil
cdef int cluster_mac_compute(EVP_MAC_CTX* ctx, const uint8_t* packet, Py_ssize_t mac_offset,
                             const uint8_t* record, Py_ssize_t record_length,
                             uint8_t* mac_out) noexcept nogil

cdef class ClusterMac:
    # HMAC keyed with one cluster MAC key (one direction of one node pair, §5.3).
    cdef EVP_MAC_CTX* ctx
    cdef readonly str digest
    cdef readonly unsigned long long signed_packets
    cdef readonly unsigned long long verified_packets
    cdef readonly unsigned long long mac_failures

    cdef int sign(self, uint8_t* packet, Py_ssize_t length) noexcept nogil
    cdef int verify(self, const ClusterView* view) noexcept nogil

cdef int cluster_batch_next(const uint8_t* batch, Py_ssize_t length, Py_ssize_t* offset,
                            const uint8_t** packet, Py_ssize_t* packet_length) noexcept nogil

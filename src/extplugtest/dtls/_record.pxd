# DTLS 1.2 record layer (RFC 6347 §4.1, RFC 9146), C level.
#
# parse_record_view()/parse_datagram_views() read record headers into RecordViews that point
# into the caller's datagram: no Python objects, no allocation, errors are results. AeadCipher
# is the AEAD protection of one epoch of one connection (AES-128-CCM-8, AES-128-CCM,
# AES-128-GCM) with its anti-replay window; its seal_into()/open_view() are the per-record C
# path.

from libc.stdint cimport uint8_t, uint16_t, uint64_t

from extplugtest.dtls._openssl cimport aead_impl

# The anonymous cpdef enums below are also module constants at Python level.

cpdef enum:
    # ContentType (RFC 5246 §6.2.1, RFC 9146 §3)
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    TLS12_CID = 25

cpdef enum:
    # Record protection algorithms (local numbers, not IANA's): RFC 6655 / 7251 and RFC 5288.
    AEAD_AES_128_CCM_8 = 1
    AEAD_AES_128_CCM = 2
    AEAD_AES_128_GCM = 3

cpdef enum:
    DTLS_1_0 = 0xFEFF
    DTLS_1_2 = 0xFEFD
    HEADER_LENGTH = 13              # type, version, epoch, seq, length (without a CID)
    EXPLICIT_NONCE_LENGTH = 8       # epoch ‖ seq at the start of every AEAD fragment
    MAX_CID_LENGTH = 255            # cid<0..2^8-1> (RFC 9146 §3)
    MAX_PLAINTEXT_LENGTH = 16384    # 2^14 (RFC 5246 §6.2.1)
    MAX_FRAGMENT_LENGTH = 18432     # 2^14 + 2048 (RFC 5246 §6.2.3)

cpdef enum:
    # Results of parsing, opening and sealing. Parse results first.
    RECORD_OK = 0
    RECORD_TRUNCATED = 1            # shorter than the record header
    RECORD_BAD_LENGTH = 2           # length field beyond the datagram or above 2^14 + 2048
    RECORD_BAD_TYPE = 3             # unknown content type
    RECORD_BAD_VERSION = 4          # not DTLS 1.2 (1.0 is accepted for ClientHello / HVR)
    RECORD_UNEXPECTED_CID = 5       # tls12_cid, but no CID length known, or in epoch 0
    RECORD_TOO_MANY = 6             # more records in the datagram than the caller's array holds
    # opening (a record that parsed)
    RECORD_BAD_EPOCH = 7            # not the epoch of this cipher
    RECORD_CID_MISMATCH = 8         # CID missing, unexpected or not ours (RFC 9146 §3)
    RECORD_DUPLICATE = 9            # replay window: received already (RFC 6347 §4.1.2.6)
    RECORD_TOO_OLD = 10             # replay window: left of the window
    RECORD_TOO_SHORT = 11           # fragment shorter than explicit nonce + tag
    RECORD_BAD_TAG = 12             # authentication failed
    RECORD_BAD_INNER = 13           # DTLSInnerPlaintext all zeros or a bad real type (§4)
    RECORD_OVERFLOW = 14            # plaintext above 2^14
    # sealing / both
    RECORD_NO_SPACE = 15            # output buffer too small
    RECORD_NONCE_REUSE = 16         # seal: (epoch, seq) not above the last sealed one
    RECORD_BAD_SEQ = 17             # sequence number above 2^48 - 1
    RECORD_CRYPTO = 18              # unexpected libcrypto failure

cdef struct RecordView:
    const uint8_t* start            # first header byte
    const uint8_t* cid              # NULL unless tls12_cid
    const uint8_t* fragment
    Py_ssize_t record_length        # header + fragment
    uint64_t seq                    # 48 bits
    uint16_t version
    uint16_t epoch
    uint16_t length                 # of the fragment
    uint8_t type
    uint8_t cid_length

cdef struct Plaintext:
    const uint8_t* data             # in the caller's output buffer
    Py_ssize_t length
    uint8_t content_type            # the real type (from DTLSInnerPlaintext for tls12_cid)
    bint newest                     # above every earlier authenticated seq of this epoch

cdef struct ReplayState:
    # The 64-record sliding window of RFC 6347 §4.1.2.6 (RFC 4303 §3.4.3).
    uint64_t highest                # highest authenticated sequence number (right edge)
    uint64_t bitmap                 # bit i: record highest - i authenticated; 0: none yet

cdef int parse_record_view(const uint8_t* data, Py_ssize_t length, int cid_length,
                           RecordView* view) noexcept nogil
cdef int parse_datagram_views(const uint8_t* data, Py_ssize_t length, int cid_length,
                              RecordView* views, int capacity, int* count) noexcept nogil

cdef bint datagram_filtered(const uint8_t* data, Py_ssize_t length) noexcept nogil

cdef int replay_check(const ReplayState* window, uint64_t seq) noexcept nogil
cdef bint replay_update(ReplayState* window, uint64_t seq) noexcept nogil

cdef class ReplayWindow:
    cdef ReplayState state

cdef class AeadCipher:
    cdef const aead_impl* impl          # the provider's AES-CCM or AES-GCM functions
    cdef void* seal_ctx                 # their contexts, one per direction
    cdef void* open_ctx
    cdef uint8_t write_iv[4]
    cdef uint8_t read_iv[4]
    cdef readonly int aead
    cdef readonly int tag_length
    cdef readonly uint16_t epoch
    cdef readonly bytes write_cid       # the peer's CID, put on sealed records (b"": none)
    cdef readonly bytes read_cid        # our CID, required on opened records (b"": none)
    cdef const uint8_t* write_cid_data  # into write_cid / read_cid, for the nogil path
    cdef const uint8_t* read_cid_data
    cdef int write_cid_length
    cdef int read_cid_length
    cdef readonly bint anti_replay
    cdef bytes write_key                # kept for a graceful restart (export_state)
    cdef bytes read_key
    cdef ReplayState window
    cdef uint64_t last_sealed           # epoch << 48 | seq of the last sealed record
    # counters
    cdef readonly unsigned long long sealed
    cdef readonly unsigned long long opened
    cdef readonly unsigned long long auth_failures
    cdef readonly unsigned long long replays
    cdef readonly unsigned long long discarded

    cdef Py_ssize_t seal_into(self, uint16_t epoch, uint64_t seq, uint8_t content_type,
                              const uint8_t* plaintext, Py_ssize_t length,
                              const uint8_t* cid, Py_ssize_t cid_length,
                              uint8_t* out, Py_ssize_t capacity) noexcept nogil
    cdef int open_view(self, const RecordView* record, uint8_t* out, Py_ssize_t capacity,
                       Plaintext* result) noexcept nogil
    cdef int _open(self, const RecordView* record, uint8_t* out, Py_ssize_t capacity,
                   Plaintext* result) noexcept nogil

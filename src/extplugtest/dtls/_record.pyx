# cython: freethreading_compatible = False
"""DTLS 1.2 record layer: record parsing and AEAD record protection (see _record.pxd).

The C path is ``parse_record_view``/``parse_datagram_views`` and
``AeadCipher.seal_into``/``open_view``: no Python objects, errors are RECORD_* results. The
Python API on top (``parse_datagram``, ``AeadCipher.seal``/``open``, ``ReplayWindow``) raises
``RecordError`` for every failure.

Record protection follows RFC 5246 §6.2.3.3 for AEAD ciphers with the DTLS sequence number of
RFC 6347 §4.1.2.1, the nonce of RFC 6655 §3 / RFC 5288 §3 (4-byte implicit IV from the key
block ‖ 8-byte explicit nonce = epoch ‖ seq, sent in front of the ciphertext) and, for
tls12_cid records, the DTLSInnerPlaintext and additional data of RFC 9146 §4 and §5.
"""

from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from cpython.buffer cimport PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from extplugtest._net cimport get_bytes
from extplugtest.dtls._openssl cimport (
    EVP_CIPHER, EVP_CIPHER_fetch, ERR_clear_error, OPENSSL_cleanse, OpenSSL_version,
    OPENSSL_VERSION, aead_ctx_free, aead_ctx_new, aead_impl, aead_impl_resolve, aead_open,
    aead_seal,
)

from collections import namedtuple

from extplugtest._openssl_init cimport extplugtest_openssl_init

extplugtest_openssl_init()  # before any other libcrypto call (csrc/openssl_init.h)

cdef enum:
    KEY_LENGTH = 16                 # AES-128
    IMPLICIT_IV_LENGTH = 4          # client/server_write_IV (RFC 6655 §3, RFC 5288 §3)
    NONCE_LENGTH = 12
    MAX_AAD_LENGTH = 23 + MAX_CID_LENGTH
    SEQ_MAX = 0xFFFFFFFFFFFF        # 2^48 - 1
    HANDSHAKE_CLIENT_HELLO = 1
    HANDSHAKE_HELLO_VERIFY_REQUEST = 3

# Fetched once per process (they stay fetched, so the provider and the functions taken from
# it stay loaded); records are protected through the provider's functions (csrc/aead_provider.h).
cdef EVP_CIPHER* _AES_128_CCM = EVP_CIPHER_fetch(NULL, b"AES-128-CCM", NULL)
cdef EVP_CIPHER* _AES_128_GCM = EVP_CIPHER_fetch(NULL, b"AES-128-GCM", NULL)
cdef aead_impl _CCM
cdef aead_impl _GCM
if (_AES_128_CCM == NULL or _AES_128_GCM == NULL or not aead_impl_resolve(_AES_128_CCM, True, &_CCM)
        or not aead_impl_resolve(_AES_128_GCM, False, &_GCM)):
    ERR_clear_error()
    raise ImportError("libcrypto's provider offers no AES-128-CCM / AES-128-GCM")

#: TLS cipher suite -> AEAD_* of its record protection (RFC 6655, 7251, 8442, 5487, 5289).
AEAD_FOR_CIPHER_SUITE = {
    0xC0A8: AEAD_AES_128_CCM_8,     # TLS_PSK_WITH_AES_128_CCM_8
    0xD003: AEAD_AES_128_CCM_8,     # TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256
    0xC0AE: AEAD_AES_128_CCM_8,     # TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
    0xC0A4: AEAD_AES_128_CCM,       # TLS_PSK_WITH_AES_128_CCM
    0xD005: AEAD_AES_128_CCM,       # TLS_ECDHE_PSK_WITH_AES_128_CCM_SHA256
    0xC0AC: AEAD_AES_128_CCM,       # TLS_ECDHE_ECDSA_WITH_AES_128_CCM
    0x00A8: AEAD_AES_128_GCM,       # TLS_PSK_WITH_AES_128_GCM_SHA256
    0xD001: AEAD_AES_128_GCM,       # TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256
    0xC02B: AEAD_AES_128_GCM,       # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    0xC02F: AEAD_AES_128_GCM,       # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
}

#: RECORD_* -> short name.
RESULT_NAMES = {
    RECORD_OK: "ok",
    RECORD_TRUNCATED: "truncated header",
    RECORD_BAD_LENGTH: "length beyond the datagram",
    RECORD_BAD_TYPE: "unknown content type",
    RECORD_BAD_VERSION: "unsupported version",
    RECORD_UNEXPECTED_CID: "unexpected tls12_cid record",
    RECORD_TOO_MANY: "too many records",
    RECORD_BAD_EPOCH: "wrong epoch",
    RECORD_CID_MISMATCH: "connection ID mismatch",
    RECORD_DUPLICATE: "replayed record",
    RECORD_TOO_OLD: "record left of the replay window",
    RECORD_TOO_SHORT: "fragment too short",
    RECORD_BAD_TAG: "authentication failed",
    RECORD_BAD_INNER: "bad DTLSInnerPlaintext",
    RECORD_OVERFLOW: "record overflow",
    RECORD_NO_SPACE: "output buffer too small",
    RECORD_NONCE_REUSE: "sequence number not above the last sealed one",
    RECORD_BAD_SEQ: "sequence number above 2^48 - 1",
    RECORD_CRYPTO: "libcrypto failure",
}

#: One record of a datagram, as parse_datagram returns it.
Record = namedtuple("Record", "content_type version epoch seq cid fragment raw")


class RecordError(ValueError):
    """A record that cannot be parsed, opened or sealed; ``result`` is the RECORD_* code.

    From ``parse_datagram``, ``offset`` is where the bad record starts and ``records`` holds
    the well-formed records before it.
    """

    def __init__(self, result, offset=0, records=()):
        self.result = result
        self.offset = offset
        self.records = list(records)
        super().__init__(f"{RESULT_NAMES.get(result, 'unknown')} (RECORD result {result}"
                         + (f", offset {offset})" if offset else ")"))


def openssl_version() -> str:
    """The version string of the libcrypto this module runs with."""
    return OpenSSL_version(OPENSSL_VERSION).decode()


# -- Helpers --------------------------------------------------------------------------------

cdef inline uint16_t _get16(const uint8_t* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline void _put16(uint8_t* p, Py_ssize_t value) noexcept nogil:
    p[0] = <uint8_t>(value >> 8)
    p[1] = <uint8_t>value


cdef inline bint _known_type(int content_type) noexcept nogil:
    return CHANGE_CIPHER_SPEC <= content_type <= APPLICATION_DATA


cdef Py_ssize_t _additional_data(uint8_t* aad, const uint8_t* epoch_seq, uint8_t content_type,
                                 uint16_t version, const uint8_t* cid, int cid_length,
                                 Py_ssize_t length) noexcept nogil:
    """Build the AEAD additional data into *aad*; returns its length.

    Without CID (RFC 5246 §6.2.3.3, RFC 6347 §4.1.2.1): epoch ‖ seq ‖ type ‖ version ‖ length.
    tls12_cid (RFC 9146 §5): seq_num_placeholder (8 x 0xff) ‖ 25 ‖ cid_length ‖ 25 ‖ version
    ‖ epoch ‖ seq ‖ cid ‖ length_of_DTLSInnerPlaintext.
    """
    if cid_length == 0:
        memcpy(aad, epoch_seq, 8)
        aad[8] = content_type
        _put16(aad + 9, version)
        _put16(aad + 11, length)
        return 13
    memset(aad, 0xFF, 8)
    aad[8] = TLS12_CID
    aad[9] = <uint8_t>cid_length
    aad[10] = TLS12_CID
    _put16(aad + 11, version)
    memcpy(aad + 13, epoch_seq, 8)
    memcpy(aad + 21, cid, cid_length)
    _put16(aad + 21 + cid_length, length)
    return 23 + cid_length


# -- Record parsing (RFC 6347 §4.1, RFC 9146 §4) -------------------------------------------

cdef int parse_record_view(const uint8_t* data, Py_ssize_t length, int cid_length,
                           RecordView* r) noexcept nogil:
    """Parse the record at *data*; *cid_length* is the length of the receiver's CIDs (<= 0:
    none, so tls12_cid records are rejected). ``r.record_length`` is set on RECORD_OK."""
    cdef Py_ssize_t header = HEADER_LENGTH
    if length < HEADER_LENGTH:
        return RECORD_TRUNCATED
    r.start = data
    r.type = data[0]
    r.version = _get16(data + 1)
    r.epoch = _get16(data + 3)
    r.seq = ((<uint64_t>_get16(data + 5) << 32) | (<uint64_t>_get16(data + 7) << 16)
             | _get16(data + 9))
    r.cid = NULL
    r.cid_length = 0
    if r.type == TLS12_CID:
        # The CID has no length byte: the receiver must know it (RFC 9146 §4). CIDs are only
        # used once the connection is encrypted, i.e. not in epoch 0.
        if cid_length <= 0 or cid_length > MAX_CID_LENGTH or r.epoch == 0:
            return RECORD_UNEXPECTED_CID
        header += cid_length
        if length < header:
            return RECORD_TRUNCATED
        r.cid = data + 11
        r.cid_length = <uint8_t>cid_length
    elif not _known_type(r.type):
        return RECORD_BAD_TYPE
    r.length = _get16(data + header - 2)
    if r.length > MAX_FRAGMENT_LENGTH or header + r.length > length:
        return RECORD_BAD_LENGTH
    r.fragment = data + header
    r.record_length = header + r.length
    # DTLS 1.0 (0xfeff) only on a plaintext ClientHello or HelloVerifyRequest (RFC 6347 §4.2.1:
    # the HVR and a first ClientHello may carry 1.0 for backward compatibility).
    if r.version != DTLS_1_2 and not (
            r.version == DTLS_1_0 and r.type == HANDSHAKE and r.epoch == 0 and r.length > 0
            and (r.fragment[0] == HANDSHAKE_CLIENT_HELLO
                 or r.fragment[0] == HANDSHAKE_HELLO_VERIFY_REQUEST)):
        return RECORD_BAD_VERSION
    return RECORD_OK


cdef int parse_datagram_views(const uint8_t* data, Py_ssize_t length, int cid_length,
                              RecordView* views, int capacity, int* count) noexcept nogil:
    """Parse every record of a datagram (RFC 6347 §4.1.1) into *views*; ``count[0]`` is the
    number of good records. Stops at the first malformed one (its framing cannot be trusted)
    and returns its result; the records before it stay usable. An empty datagram is
    RECORD_TRUNCATED."""
    cdef Py_ssize_t pos = 0
    cdef int status
    count[0] = 0
    while True:
        if count[0] == capacity:
            return RECORD_TOO_MANY
        status = parse_record_view(data + pos, length - pos, cid_length, &views[count[0]])
        if status != RECORD_OK:
            return status
        pos += views[count[0]].record_length
        count[0] += 1
        if pos == length:
            return RECORD_OK


def parse_datagram(data, int cid_length=0, max_records=None) -> list:
    """Python view of parse_datagram_views: the records of *data* as ``Record`` tuples.

    Raises RecordError (with the good records before the bad one) for a malformed record, or
    RECORD_TOO_MANY when there are more than *max_records* (default: no limit).
    """
    cdef Py_buffer buf
    cdef bint held
    cdef RecordView* views = NULL
    cdef RecordView* v
    cdef Py_ssize_t capacity
    cdef Py_ssize_t pos = 0
    cdef int count = 0
    cdef int status
    cdef int i
    held = get_bytes(data, &buf)
    try:
        # A record has at least a header, which bounds the count.
        capacity = min(buf.len // HEADER_LENGTH + 1, 0x7FFFFFFF)
        if max_records is not None:
            capacity = min(capacity, max(<Py_ssize_t>max_records, 0))
        views = <RecordView*>malloc(max(capacity, 1) * sizeof(RecordView))
        if views == NULL:
            raise MemoryError()
        status = parse_datagram_views(<const uint8_t*>buf.buf, buf.len, cid_length, views,
                                      <int>capacity, &count)
        records = []
        for i in range(count):
            v = &views[i]
            records.append(Record(
                v.type, v.version, v.epoch, v.seq,
                (<const char*>v.cid)[:v.cid_length] if v.cid != NULL else b"",
                (<const char*>v.fragment)[:v.length],
                (<const char*>v.start)[:v.record_length],
            ))
            pos += v.record_length
        if status != RECORD_OK:
            raise RecordError(status, pos, records)
        return records
    finally:
        free(views)
        if held:
            PyBuffer_Release(&buf)


# -- Californium's default datagram filter (DtlsDatagramFilter) ----------------------------

cdef bint datagram_filtered(const uint8_t* data, Py_ssize_t length) noexcept nogil:
    """Does the first record header of a datagram fail Californium's epoch/sequence check
    (DTLS.USE_DEFAULT_RECORD_FILTER: "drop if epoch > 1 or seq >= 2^32")? Looked at before
    any parsing or decryption; a datagram shorter than a header is left to the parser."""
    if length < HEADER_LENGTH:
        return False
    return _get16(data + 3) > 1 or _get16(data + 5) != 0


def filtered_datagram(data) -> bool:
    """Python view of datagram_filtered: drop *data* unparsed."""
    cdef Py_buffer buf
    cdef bint held = get_bytes(data, &buf)
    try:
        return datagram_filtered(<const uint8_t*>buf.buf, buf.len)
    finally:
        if held:
            PyBuffer_Release(&buf)


# -- Anti-replay window (RFC 6347 §4.1.2.6) -------------------------------------------------

cdef int replay_check(const ReplayState* w, uint64_t seq) noexcept nogil:
    """RECORD_OK if *seq* may be new; checked before decryption."""
    if w.bitmap == 0 or seq > w.highest:
        return RECORD_OK
    if w.highest - seq >= 64:
        return RECORD_TOO_OLD
    if (w.bitmap >> (w.highest - seq)) & 1:
        return RECORD_DUPLICATE
    return RECORD_OK


cdef bint replay_update(ReplayState* w, uint64_t seq) noexcept nogil:
    """Mark *seq* received, only after the record authenticated (§4.1.2.6: "updated only if the
    MAC verification succeeds"); True if it is the newest so far (the right edge moved)."""
    cdef uint64_t shift
    if w.bitmap == 0:
        w.highest = seq
        w.bitmap = 1
        return True
    if seq > w.highest:
        shift = seq - w.highest
        w.bitmap = (w.bitmap << shift) | 1 if shift < 64 else 1
        w.highest = seq
        return True
    if w.highest - seq < 64:
        w.bitmap |= (<uint64_t>1) << (w.highest - seq)
    return False


cdef class ReplayWindow:
    """Python view of a 64-record anti-replay window (for tests and tools)."""

    def check(self, uint64_t seq) -> int:
        """RECORD_OK, RECORD_DUPLICATE or RECORD_TOO_OLD."""
        return replay_check(&self.state, seq)

    def accept(self, uint64_t seq) -> bool:
        """Mark *seq* authenticated; True if it is the newest so far."""
        return replay_update(&self.state, seq)

    @property
    def highest(self):
        """The highest accepted sequence number, or None."""
        return self.state.highest if self.state.bitmap else None

    @property
    def bitmap(self) -> int:
        return self.state.bitmap


# -- AEAD record protection -----------------------------------------------------------------

cdef class AeadCipher:
    """AEAD protection of one epoch of one connection (both directions).

    *write_key*/*write_iv* protect the records this side sends, *read_key*/*read_iv* the ones
    it receives (16-byte keys, 4-byte implicit IVs from the key block, RFC 5246 §6.3).
    *write_cid* is the peer's CID, put on sealed records as tls12_cid (b"": plain records);
    *read_cid* is this side's CID, required on every opened record (RFC 9146 §3).
    *anti_replay* enables the replay check of opened records (Californium's
    DTLS.USE_ANTI_REPLAY_FILTER); the window is kept up to date either way.
    """

    def __cinit__(self, int aead, write_key, write_iv, read_key, read_iv, *, int epoch=1,
                  write_cid=b"", read_cid=b"", bint anti_replay=True):
        if aead == AEAD_AES_128_CCM_8 or aead == AEAD_AES_128_CCM:
            self.impl = &_CCM
            self.tag_length = 8 if aead == AEAD_AES_128_CCM_8 else 16
        elif aead == AEAD_AES_128_GCM:
            self.impl = &_GCM
            self.tag_length = 16
        else:
            raise ValueError(f"unknown AEAD {aead}")
        write_key, read_key = bytes(write_key), bytes(read_key)
        write_iv, read_iv = bytes(write_iv), bytes(read_iv)
        if len(write_key) != KEY_LENGTH or len(read_key) != KEY_LENGTH:
            raise ValueError("keys must be 16 bytes")
        if len(write_iv) != IMPLICIT_IV_LENGTH or len(read_iv) != IMPLICIT_IV_LENGTH:
            raise ValueError("implicit IVs must be 4 bytes")
        if not 1 <= epoch <= 0xFFFF:
            raise ValueError("epoch must be 1..65535 (epoch 0 is not protected)")
        self.write_cid, self.read_cid = bytes(write_cid), bytes(read_cid)
        if len(self.write_cid) > MAX_CID_LENGTH or len(self.read_cid) > MAX_CID_LENGTH:
            raise ValueError("a connection ID has at most 255 bytes")
        self.write_cid_data = <const uint8_t*>PyBytes_AS_STRING(self.write_cid)
        self.write_cid_length = len(self.write_cid)
        self.read_cid_data = <const uint8_t*>PyBytes_AS_STRING(self.read_cid)
        self.read_cid_length = len(self.read_cid)
        self.write_key, self.read_key = write_key, read_key
        self.aead = aead
        self.epoch = <uint16_t>epoch
        self.anti_replay = anti_replay
        memcpy(self.write_iv, PyBytes_AS_STRING(write_iv), IMPLICIT_IV_LENGTH)
        memcpy(self.read_iv, PyBytes_AS_STRING(read_iv), IMPLICIT_IV_LENGTH)
        self.seal_ctx = aead_ctx_new(self.impl, <const uint8_t*>PyBytes_AS_STRING(write_key),
                                     KEY_LENGTH, 1, NONCE_LENGTH, self.tag_length)
        self.open_ctx = aead_ctx_new(self.impl, <const uint8_t*>PyBytes_AS_STRING(read_key),
                                     KEY_LENGTH, 0, NONCE_LENGTH, self.tag_length)
        if self.seal_ctx == NULL or self.open_ctx == NULL:
            ERR_clear_error()
            raise MemoryError("cannot create the libcrypto cipher contexts")

    def __dealloc__(self):
        if self.impl != NULL:                   # (NULL: __cinit__ refused the AEAD)
            aead_ctx_free(self.impl, self.seal_ctx)  # frees NULL quietly; cleanses the key
            aead_ctx_free(self.impl, self.open_ctx)
        OPENSSL_cleanse(self.write_iv, IMPLICIT_IV_LENGTH)
        OPENSSL_cleanse(self.read_iv, IMPLICIT_IV_LENGTH)

    # -- C level ----------------------------------------------------------------------------
    cdef Py_ssize_t seal_into(self, uint16_t epoch, uint64_t seq, uint8_t content_type,
                              const uint8_t* plaintext, Py_ssize_t length,
                              const uint8_t* cid, Py_ssize_t cid_length,
                              uint8_t* out, Py_ssize_t capacity) noexcept nogil:
        """Write the protected record to *out*; its length, or minus a RECORD_* result.

        *cid_length* > 0 makes a tls12_cid record. *plaintext* must not overlap *out*, except
        exactly in place (at ``out + header + 8``).
        """
        cdef uint8_t nonce[NONCE_LENGTH]
        cdef uint8_t aad[MAX_AAD_LENGTH]
        cdef Py_ssize_t header = HEADER_LENGTH + cid_length
        cdef Py_ssize_t inner = length + (1 if cid_length else 0)
        cdef Py_ssize_t fragment = EXPLICIT_NONCE_LENGTH + inner + self.tag_length
        cdef Py_ssize_t aad_length
        cdef uint64_t counter = (<uint64_t>epoch << 48) | seq
        cdef uint8_t* body
        if epoch != self.epoch:
            return -RECORD_BAD_EPOCH
        if seq > SEQ_MAX:
            return -RECORD_BAD_SEQ
        if not _known_type(content_type):
            return -RECORD_BAD_TYPE
        if length > MAX_PLAINTEXT_LENGTH or length < 0:
            return -RECORD_OVERFLOW
        if cid_length > MAX_CID_LENGTH or cid_length < 0:
            return -RECORD_CID_MISMATCH
        if header + fragment > capacity:
            return -RECORD_NO_SPACE
        # A nonce must never repeat under one key (RFC 5288 §3, RFC 6655 §3). (last_sealed
        # starts at 0, below every epoch >= 1 counter; restore_state() may set it.)
        if counter <= self.last_sealed:
            return -RECORD_NONCE_REUSE
        body = out + header + EXPLICIT_NONCE_LENGTH
        # Header (RFC 6347 §4.1; RFC 9146 §4 with the CID before the length).
        out[0] = TLS12_CID if cid_length else content_type
        _put16(out + 1, DTLS_1_2)
        _put16(out + 3, epoch)
        _put16(out + 5, <uint16_t>(seq >> 32))
        _put16(out + 7, <uint16_t>(seq >> 16))
        _put16(out + 9, <uint16_t>seq)
        if cid_length:
            memcpy(out + 11, cid, cid_length)
        _put16(out + header - 2, fragment)
        # Explicit nonce = epoch ‖ seq; nonce = implicit IV ‖ explicit nonce.
        memcpy(out + header, out + 3, EXPLICIT_NONCE_LENGTH)
        memcpy(nonce, self.write_iv, IMPLICIT_IV_LENGTH)
        memcpy(nonce + IMPLICIT_IV_LENGTH, out + 3, EXPLICIT_NONCE_LENGTH)
        aad_length = _additional_data(aad, out + 3, content_type, DTLS_1_2, cid,
                                      <int>cid_length, inner)
        if cid_length:
            # DTLSInnerPlaintext = content ‖ real type ‖ no zero padding (RFC 9146 §4), made
            # contiguous because CCM encrypts in one chunk.
            if length:
                memmove(body, plaintext, length)
            body[length] = content_type
            plaintext = body
        if not aead_seal(self.impl, self.seal_ctx, self.tag_length, nonce,
                         NONCE_LENGTH, aad, aad_length, plaintext, inner, body):
            ERR_clear_error()
            return -RECORD_CRYPTO
        self.last_sealed = counter
        self.sealed += 1
        return header + fragment

    cdef int open_view(self, const RecordView* record, uint8_t* out, Py_ssize_t capacity,
                       Plaintext* result) noexcept nogil:
        """Authenticate and decrypt a parsed record into *out* (which may be
        ``record.fragment + 8``: in place); counts the outcome. Needs
        ``capacity >= record.length - 8 - tag_length``."""
        cdef int status = self._open(record, out, capacity, result)
        if status == RECORD_OK:
            self.opened += 1
        elif status == RECORD_BAD_TAG:
            self.auth_failures += 1
        elif status == RECORD_DUPLICATE or status == RECORD_TOO_OLD:
            self.replays += 1
        else:
            self.discarded += 1
        return status

    cdef int _open(self, const RecordView* r, uint8_t* out, Py_ssize_t capacity,
                   Plaintext* result) noexcept nogil:
        cdef uint8_t nonce[NONCE_LENGTH]
        cdef uint8_t aad[MAX_AAD_LENGTH]
        cdef Py_ssize_t aad_length
        cdef Py_ssize_t length = <Py_ssize_t>r.length - EXPLICIT_NONCE_LENGTH - self.tag_length
        cdef int status
        if r.epoch != self.epoch:
            return RECORD_BAD_EPOCH
        # Once a CID is in use for this direction every record carries it (RFC 9146 §3).
        if self.read_cid_length:
            if (r.type != TLS12_CID or r.cid_length != self.read_cid_length
                    or memcmp(r.cid, self.read_cid_data, self.read_cid_length) != 0):
                return RECORD_CID_MISMATCH
        elif r.type == TLS12_CID:
            return RECORD_CID_MISMATCH
        if length < (1 if r.cid_length else 0):
            return RECORD_TOO_SHORT
        if length > capacity:
            return RECORD_NO_SPACE
        if self.anti_replay:
            status = replay_check(&self.window, r.seq)
            if status != RECORD_OK:
                return status
        memcpy(nonce, self.read_iv, IMPLICIT_IV_LENGTH)
        memcpy(nonce + IMPLICIT_IV_LENGTH, r.fragment, EXPLICIT_NONCE_LENGTH)
        aad_length = _additional_data(aad, r.start + 3, r.type, r.version, r.cid, r.cid_length,
                                      length)
        if not aead_open(self.impl, self.open_ctx, self.tag_length, nonce,
                         NONCE_LENGTH, aad, aad_length, r.fragment + EXPLICIT_NONCE_LENGTH,
                         length, r.fragment + EXPLICIT_NONCE_LENGTH + length, out):
            ERR_clear_error()
            return RECORD_BAD_TAG
        result.data = out
        if r.cid_length:
            # Strip the zero padding; the last non-zero byte is the real type (RFC 9146 §4).
            length -= 1
            while length >= 0 and out[length] == 0:
                length -= 1
            if length < 0 or not _known_type(out[length]):
                return RECORD_BAD_INNER
            result.content_type = out[length]
        else:
            result.content_type = r.type
        if length > MAX_PLAINTEXT_LENGTH:
            return RECORD_OVERFLOW
        result.length = length
        result.newest = replay_update(&self.window, r.seq)
        return RECORD_OK

    # -- Python level -----------------------------------------------------------------------
    def seal(self, int epoch, unsigned long long seq, int content_type, plaintext,
             cid=None) -> bytes:
        """The protected record for *plaintext*; *cid* overrides ``write_cid`` (b"": none).

        Raises RecordError (e.g. RECORD_NONCE_REUSE when (epoch, seq) is not above the last
        sealed record's).
        """
        cdef Py_buffer buf
        cdef bint held
        cdef const uint8_t* cid_data = self.write_cid_data
        cdef Py_ssize_t cid_length = self.write_cid_length
        cdef Py_ssize_t n
        cdef bytes record
        if cid is not None:
            if type(cid) is not bytes:
                cid = bytes(cid)
            cid_data = <const uint8_t*>PyBytes_AS_STRING(cid)
            cid_length = PyBytes_GET_SIZE(cid)
        if epoch != self.epoch:
            raise RecordError(RECORD_BAD_EPOCH)
        if not _known_type(content_type):
            raise RecordError(RECORD_BAD_TYPE)
        held = get_bytes(plaintext, &buf)
        try:
            n = (HEADER_LENGTH + cid_length + EXPLICIT_NONCE_LENGTH + buf.len
                 + (1 if cid_length else 0) + self.tag_length)
            record = PyBytes_FromStringAndSize(NULL, n)
            n = self.seal_into(<uint16_t>epoch, seq, <uint8_t>content_type,
                               <const uint8_t*>buf.buf, buf.len, cid_data, cid_length,
                               <uint8_t*>PyBytes_AS_STRING(record), n)
        finally:
            if held:
                PyBuffer_Release(&buf)
        if n < 0:
            raise RecordError(-n)
        return record

    def open(self, record) -> tuple:
        """``(content_type, plaintext)`` of one protected record (exactly one, header
        included). Raises RecordError for anything that does not parse, is replayed or
        fails authentication (counted like the C path)."""
        cdef Py_buffer buf
        cdef bint held
        cdef RecordView view
        cdef Plaintext result
        cdef uint8_t out[MAX_FRAGMENT_LENGTH]
        cdef int status
        held = get_bytes(record, &buf)
        try:
            status = parse_record_view(<const uint8_t*>buf.buf, buf.len,
                                       self.read_cid_length, &view)
            if status == RECORD_OK and view.record_length != buf.len:
                status = RECORD_BAD_LENGTH
            if status != RECORD_OK:
                self.discarded += 1
            else:
                status = self.open_view(&view, out, MAX_FRAGMENT_LENGTH, &result)
        finally:
            if held:
                PyBuffer_Release(&buf)
        if status != RECORD_OK:
            raise RecordError(status)
        return result.content_type, PyBytes_FromStringAndSize(<const char*>result.data,
                                                              result.length)

    def record_length(self, Py_ssize_t plaintext_length) -> int:
        """Length of the sealed record for a plaintext of this length (with ``write_cid``)."""
        return (HEADER_LENGTH + self.write_cid_length + EXPLICIT_NONCE_LENGTH + plaintext_length
                + (1 if self.write_cid_length else 0) + self.tag_length)

    @property
    def highest_seq(self):
        """The highest authenticated sequence number so far, or None."""
        return self.window.highest if self.window.bitmap else None

    def export_state(self) -> dict:
        """Everything that recreates this cipher in another process (a graceful restart,
        dtls/persistence.py): its parameters, keys and implicit IVs, the replay window and
        the last sealed (epoch, seq). Secret: handle like a master secret."""
        return {
            "aead": self.aead,
            "epoch": self.epoch,
            "write_key": self.write_key,
            "write_iv": PyBytes_FromStringAndSize(<const char*>self.write_iv,
                                                  IMPLICIT_IV_LENGTH),
            "read_key": self.read_key,
            "read_iv": PyBytes_FromStringAndSize(<const char*>self.read_iv, IMPLICIT_IV_LENGTH),
            "write_cid": self.write_cid,
            "read_cid": self.read_cid,
            "anti_replay": self.anti_replay,
            "window_highest": self.window.highest,
            "window_bitmap": self.window.bitmap,
            "last_sealed": self.last_sealed,
        }

    def restore_state(self, uint64_t window_highest, uint64_t window_bitmap,
                      uint64_t last_sealed) -> None:
        """Take over the replay window and the last sealed (epoch, seq) of an exported
        cipher (export_state): replayed records stay refused, no nonce is used twice."""
        if window_highest > SEQ_MAX or (last_sealed and last_sealed >> 48 != self.epoch):
            raise ValueError("sequence state out of range for this epoch")
        self.window.highest = window_highest
        self.window.bitmap = window_bitmap
        self.last_sealed = last_sealed

    def stats(self) -> dict:
        return {
            "sealed": self.sealed,
            "opened": self.opened,
            "auth-failures": self.auth_failures,
            "replays": self.replays,
            "discarded": self.discarded,
        }


# -- Benchmark helpers: whole loops at C level ----------------------------------------------

def _seal_records(AeadCipher cipher, int count, Py_ssize_t size, uint64_t first_seq) -> bytes:
    """Seal *count* records of *size* zero bytes (seq = first_seq, first_seq + 1, ...) with the
    cipher's write CID in one C loop; returns them concatenated."""
    cdef Py_ssize_t length = cipher.record_length(size)
    cdef bytes records = PyBytes_FromStringAndSize(NULL, count * length)
    cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(records)
    cdef uint8_t* plaintext = <uint8_t*>malloc(size + 1)
    cdef Py_ssize_t n = 0
    cdef int i
    if plaintext == NULL:
        raise MemoryError()
    memset(plaintext, 0, size + 1)
    with nogil:
        for i in range(count):
            n = cipher.seal_into(cipher.epoch, first_seq + i, APPLICATION_DATA, plaintext, size,
                                 cipher.write_cid_data, cipher.write_cid_length,
                                 out + i * length, length)
            if n < 0:
                break
    free(plaintext)
    if n < 0:
        raise RecordError(-n)
    return records


def _open_records(AeadCipher cipher, records) -> int:
    """Parse and open every record of *records* (concatenated) in one C loop; returns how many
    authenticated. The replay window is reset first, so that the same records can be opened
    again in every benchmark round."""
    cdef Py_buffer buf
    cdef bint held
    cdef RecordView view
    cdef Plaintext result
    cdef uint8_t* out
    cdef Py_ssize_t pos = 0
    cdef int opened = 0
    cdef const uint8_t* p
    held = get_bytes(records, &buf)
    out = <uint8_t*>malloc(MAX_FRAGMENT_LENGTH)
    p = <const uint8_t*>buf.buf
    cipher.window.highest = 0
    cipher.window.bitmap = 0
    with nogil:
        while out != NULL and pos < buf.len:
            if parse_record_view(p + pos, buf.len - pos, cipher.read_cid_length,
                                 &view) != RECORD_OK:
                break
            if cipher.open_view(&view, out, MAX_FRAGMENT_LENGTH, &result) == RECORD_OK:
                opened += 1
            pos += view.record_length
    if held:
        PyBuffer_Release(&buf)
    if out == NULL:
        raise MemoryError()
    free(out)
    return opened

"""The DTLS data path: application records of established connections, entirely in C.

DtlsEngine is the CoAP UdpEngine with DTLS record protection below it. It owns the socket: a
batch of datagrams comes in with one recvmmsg; a datagram that is exactly one application
record (tls12_cid with our CID, or application_data from a known address) of an established
connection is opened in place, its CoAP message answered by the engine (C fast resources or
the Python endpoint), and the answers are sealed and leave with one sendmmsg per batch.
Everything else (handshakes, alerts, several records in one datagram, unknown peers) goes to
the Python connector (connector.DtlsServerTransport) as it arrived.

A CID record that authenticates, comes from a new address and is the newest of its connection
moves the connection there first (RFC 9146 §6), through the connector (which moves its
deduplication state along).
"""

import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport Py_XDECREF, Py_XINCREF, PyObject
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset

from extplugtest.coap._dedup cimport PeerKey
from extplugtest.coap._udp cimport RX_BATCH, SLOT_SIZE, TX_BATCH, UdpEngine, peer_key_from_sockaddr
from extplugtest.dtls._cid_table cimport CidTable
from extplugtest.dtls._record cimport (
    APPLICATION_DATA, EXPLICIT_NONCE_LENGTH, HEADER_LENGTH, MAX_CID_LENGTH,
    RECORD_BAD_TAG, RECORD_DUPLICATE, RECORD_OK, RECORD_TOO_OLD, TLS12_CID, AeadCipher,
    Plaintext, RecordView, datagram_filtered, parse_record_view,
)
from extplugtest._net cimport (
    address_tuple, fill_sockaddr, sockaddr_storage, udp_batch_addr, udp_batch_addrlen,
    udp_batch_buffer, udp_batch_free, udp_batch_init, udp_batch_length, udp_batch_queue,
    udp_batch_queued_length, udp_batch_send, udp_batch_set, udp_batch_set_length,
    udp_batch_truncated, udp_send_one,
)

logger = logging.getLogger("extplugtest.dtls")

cdef enum:
    # A sealed record is the plaintext plus header, CID, explicit nonce, inner type and tag.
    RECORD_OVERHEAD = HEADER_LENGTH + MAX_CID_LENGTH + EXPLICIT_NONCE_LENGTH + 1 + 16
    SEALED_SLOT = SLOT_SIZE + RECORD_OVERHEAD
    MAX_PLAINTEXT = 16384           # 2^14: a record without a negotiated limit (RFC 6347)
    # What a FastResource's response has besides its payload: the header (4), the token
    # (up to 8), its options and the payload marker (the benchmark's: 14 bytes at most). For
    # a peer with a smaller record size limit the fast path only answers payloads that fit
    # below the limit less this; larger ones go to Python, which answers block-wise.
    FAST_HEADER_ALLOWANCE = 32
    FEED_SLOT = RX_BATCH            # the rx slot beyond the receive batch, for feed()


cdef bytes _key_bytes(const sockaddr_storage* address):
    cdef PeerKey key
    peer_key_from_sockaddr(&key, address)
    return PyBytes_FromStringAndSize(<const char*>&key, PEER_KEY_LENGTH)


def peer_key(address) -> bytes:
    """The by-address table key of a Python address tuple (as DtlsConnection.key)."""
    cdef sockaddr_storage storage
    fill_sockaddr(&storage, address)
    return _key_bytes(&storage)


cdef class DtlsConnection:
    """One DTLS association: its handshake, then its session (connector.py manages both)."""

    def __cinit__(self, address, bytes read_cid, double now):
        self.read_cid = read_cid
        self.address = address
        self.started = now
        self.last_seen = now
        self.positioned = now
        self.newest = True
        self.cipher = None
        self.master_secret = b""
        self.router_node = -1
        self.send_limit = MAX_PLAINTEXT
        self.receive_limit = MAX_PLAINTEXT

    @property
    def address(self):
        return self._address

    @address.setter
    def address(self, address):
        cdef sockaddr_storage storage
        fill_sockaddr(&storage, address)
        self.key = _key_bytes(&storage)
        memcpy(self._key, PyBytes_AS_STRING(self.key), PEER_KEY_LENGTH)
        self._address = address

    cdef bint mac_filtered(self, double now, unsigned int threshold, double quiet) noexcept:
        """More than *threshold* MAC errors without a *quiet* gap: drop the records of this
        connection unopened until the gap (Californium's MAC error filter)."""
        return threshold and self.mac_errors > threshold and now - self.last_mac_error < quiet

    cdef void mac_error(self, double now, double quiet) noexcept:
        if now - self.last_mac_error >= quiet:
            self.mac_errors = 0                     # a quiet gap: start counting again
        self.mac_errors += 1
        self.last_mac_error = now

    def establish(self, session) -> None:
        """The handshake is done: application records use *session*'s epoch-1 cipher, and
        keep to its record size limits."""
        cdef int limit = getattr(session, "record_size_limit", MAX_PLAINTEXT)
        self.session = session
        self.cipher = session.cipher
        self.next_write_seq = session.next_write_seq
        if limit < MAX_PLAINTEXT and session.write_cid:
            limit -= 1      # (tls12_cid: the inner content type is counted too, to be safe)
        self.send_limit = limit
        self.receive_limit = getattr(session, "receive_limit", MAX_PLAINTEXT)


cdef class DtlsEngine(UdpEngine):
    """The UdpEngine of a DTLS socket (see the module text). ``serve()`` connects it to the
    connection tables and the connector before the socket is read."""

    def __cinit__(self, *args, **kwargs):
        # One rx slot more than a receive batch fills: feed() uses it, even in the middle of
        # a batch (the connector's slow path), without overwriting a received datagram.
        udp_batch_free(&self.rx)
        if udp_batch_init(&self.rx, RX_BATCH + 1, SLOT_SIZE):
            raise MemoryError()
        self.rx.capacity = RX_BATCH
        if udp_batch_init(&self.sealed, TX_BATCH, SEALED_SLOT):
            raise MemoryError()
        memset(self.rx_connection, 0, sizeof(self.rx_connection))
        memset(self.tx_connection, 0, sizeof(self.tx_connection))
        memset(&self.d, 0, sizeof(DataPathCounters))

    def __dealloc__(self):
        cdef int i
        for i in range(TX_BATCH):
            Py_XDECREF(self.tx_connection[i])
        udp_batch_free(&self.sealed)

    def serve(self, CidTable by_cid not None, by_address not None, int cid_length, connector, *,
              unsigned int mac_filter_threshold=0, double mac_filter_quiet=0.0) -> None:
        """Look connections up in *by_cid* (read CID -> DtlsConnection: the connector's
        CidTable itself, which C reads without Python objects) and *by_address* (peer key ->
        DtlsConnection, a dict or OrderedDict); hand everything else to *connector*:
        ``datagram(data, address)``, ``plaintext(connection, content_type, data)`` and
        ``move(connection, address)``. The MAC error filter drops a connection's records
        unopened after more than *mac_filter_threshold* bad MACs without a
        *mac_filter_quiet* seconds gap (0: off)."""
        if not isinstance(by_address, dict):
            raise TypeError("by_address must be a dict")
        self.by_cid = by_cid
        self.by_address = by_address
        self.cid_length = cid_length
        self.connector = connector
        self.mac_filter_threshold = mac_filter_threshold
        self.mac_filter_quiet = mac_filter_quiet

    # -- receiving --------------------------------------------------------------------------
    cdef int _receive(self, int slot) except -1:
        """Every record of the datagram in rx *slot*, in order: protected records of
        established connections here, the others (handshakes, unknown peers) one by one to
        the connector."""
        cdef uint8_t* data = udp_batch_buffer(&self.rx, slot)
        cdef Py_ssize_t length = udp_batch_length(&self.rx, slot)
        cdef Py_ssize_t offset = 0
        cdef RecordView record
        cdef bint alone
        if udp_batch_truncated(&self.rx, slot) or self.connector is None:
            self.d.dropped += 1
            return 0
        if datagram_filtered(data, length):     # epoch > 1 or seq >= 2^32: before anything
            self.d.filtered += 1
            return 0
        while offset < length:                  # bounded: every record is at least a header
            if parse_record_view(data + offset, length - offset, self.cid_length,
                                 &record) != RECORD_OK:
                if offset == 0:                 # the connector counts what it is
                    return self._slow(slot, 0, length)
                self.d.dropped += 1             # garbage after good records
                return 0
            alone = offset == 0 and record.record_length == length
            if not self._protected(slot, &record, alone):
                self._slow(slot, offset, record.record_length)
            offset += record.record_length
        return 0

    cdef bint _protected(self, int slot, RecordView* record, bint alone) except -1:
        """An epoch >= 1 record of an established connection: opened and handled here (True);
        False leaves it to the connector. *alone*: the datagram's only record, whose
        plaintext may take over the slot."""
        cdef Plaintext plain
        cdef PeerKey source
        cdef PyObject* found
        cdef DtlsConnection connection
        cdef AeadCipher cipher
        cdef int status
        if record.epoch == 0:
            return False                        # ClientHello, ChangeCipherSpec, plain alerts
        peer_key_from_sockaddr(&source, udp_batch_addr(&self.rx, slot))
        if record.type == TLS12_CID:
            found = self.by_cid.find(record.cid, record.cid_length)
        else:
            found = PyDict_GetItem(self.by_address, PyBytes_FromStringAndSize(
                <const char*>&source, PEER_KEY_LENGTH))
        if found == NULL:
            return False
        connection = <DtlsConnection>found
        cipher = connection.cipher
        if cipher is None:
            return False                        # still in its handshake
        if connection.mac_filtered(self.now, self.mac_filter_threshold, self.mac_filter_quiet):
            self.d.mac_filtered += 1
            return True
        # Decrypt in place: the plaintext starts behind the explicit nonce.
        status = cipher.open_view(record, <uint8_t*>record.fragment + EXPLICIT_NONCE_LENGTH,
                                  record.length - EXPLICIT_NONCE_LENGTH, &plain)
        if status != RECORD_OK:
            if status == RECORD_BAD_TAG:
                self.d.mac_errors += 1
                connection.mac_error(self.now, self.mac_filter_quiet)
            elif status == RECORD_DUPLICATE or status == RECORD_TOO_OLD:
                self.d.replays += 1
            else:
                self.d.dropped += 1             # another epoch, a CID mismatch, ...
            return True
        self.d.records += 1
        if plain.length > connection.receive_limit:
            # RFC 8449 §4 / RFC 6066 §4: above what we advertised (or the negotiated
            # max_fragment_length): a fatal record_overflow, and the connection goes.
            self.d.overflows += 1
            self.connector.record_overflow(connection)
            return True
        connection.last_seen = self.now
        connection.newest = plain.newest
        connection.moved = False
        self._authenticated(slot, connection, plain.newest)
        if memcmp(&source, connection._key, PEER_KEY_LENGTH) != 0:
            # Only a CID record finds its connection from another address.
            if not plain.newest:                # RFC 9146 §6: an older one moves nothing
                self.connector.plaintext(connection, plain.content_type,
                                         PyBytes_FromStringAndSize(<const char*>plain.data,
                                                                   plain.length))
                return True
            self.connector.move(connection, address_tuple(udp_batch_addr(&self.rx, slot)))
            connection.moved = True
        if plain.content_type != APPLICATION_DATA:
            self.connector.plaintext(connection, plain.content_type,
                                     PyBytes_FromStringAndSize(<const char*>plain.data,
                                                               plain.length))
        elif alone:                             # the common case: the slot becomes the message
            memmove(udp_batch_buffer(&self.rx, slot), plain.data, plain.length)
            udp_batch_set_length(&self.rx, slot, plain.length)
            self._deliver(slot, connection)
        else:                                   # more records follow in the slot
            udp_batch_set(&self.rx, FEED_SLOT, plain.data, plain.length,
                          udp_batch_addr(&self.rx, slot), udp_batch_addrlen(&self.rx, slot))
            self._deliver(FEED_SLOT, connection)
        return True

    cdef int _deliver(self, int slot, DtlsConnection connection) except -1:
        """The CoAP message in rx *slot* came from *connection*: the engine answers it. A
        peer with a small record size limit gets only fast answers that fit into one of its
        records (the rest goes to Python, which answers it block-wise)."""
        cdef Py_ssize_t max_message_size = self.max_message_size
        self.rx_connection[slot] = <PyObject*>connection
        if connection.send_limit < max_message_size + FAST_HEADER_ALLOWANCE:
            self.max_message_size = max(0, connection.send_limit - FAST_HEADER_ALLOWANCE)
        try:
            return self._process(slot)
        finally:
            self.rx_connection[slot] = NULL
            self.max_message_size = max_message_size

    cdef void _authenticated(self, int slot, DtlsConnection connection, bint newest) noexcept:
        """A record of *connection* in rx *slot* authenticated (here: nothing more to do)."""
        pass

    cdef int _slow(self, int slot, Py_ssize_t offset, Py_ssize_t length) except -1:
        """Bytes [offset, offset + length) of rx *slot* (records) to the connector."""
        self.d.slow_records += 1
        self.connector.datagram(
            PyBytes_FromStringAndSize(<const char*>udp_batch_buffer(&self.rx, slot) + offset,
                                      length),
            address_tuple(udp_batch_addr(&self.rx, slot)))
        return 0

    def feed(self, data, DtlsConnection connection not None) -> None:
        """The connector opened an application record of *connection*: answer its CoAP
        message (to the connection's address)."""
        cdef const uint8_t[:] raw = data
        cdef sockaddr_storage address
        cdef unsigned int address_length = fill_sockaddr(&address, connection.address)
        if raw.shape[0] == 0 or raw.shape[0] > SLOT_SIZE:
            self.c.recv_ignored += 1
            return
        udp_batch_set(&self.rx, FEED_SLOT, &raw[0], raw.shape[0], &address, address_length)
        try:
            self._deliver(FEED_SLOT, connection)
        except Exception:
            self.c.handler_errors += 1
            logger.exception("datagram processing failed")
        self.current = NULL
        self._flush()

    # -- sending ----------------------------------------------------------------------------
    cdef void _tx_commit(self, Py_ssize_t length, int slot) noexcept:
        cdef PyObject* connection = self.rx_connection[slot]
        Py_XINCREF(connection)
        self.tx_connection[self.tx.count] = connection
        UdpEngine._tx_commit(self, length, slot)

    cdef void _flush(self) noexcept:
        cdef int i
        cdef PyObject* owner
        cdef DtlsConnection connection
        cdef AeadCipher cipher
        cdef Py_ssize_t n
        for i in range(self.tx.count):
            if self.sealed.count == self.sealed.capacity:
                self.c.send_errors += udp_batch_send(self.fd, &self.sealed)
            owner = self.tx_connection[i]
            self.tx_connection[i] = NULL
            if owner == NULL:
                self.d.seal_errors += 1
                continue
            connection = <DtlsConnection>owner
            Py_XDECREF(owner)                       # `connection` holds its own reference
            cipher = connection.cipher
            if cipher is None:                      # removed while its answer was queued
                self.d.seal_errors += 1
                continue
            if <Py_ssize_t>udp_batch_queued_length(&self.tx, i) > connection.send_limit:
                self.d.oversized += 1               # the peer would drop it (RFC 8449 §4)
                continue
            n = cipher.seal_into(cipher.epoch, connection.next_write_seq, APPLICATION_DATA,
                                 udp_batch_buffer(&self.tx, i),
                                 <Py_ssize_t>udp_batch_queued_length(&self.tx, i),
                                 cipher.write_cid_data, cipher.write_cid_length,
                                 udp_batch_buffer(&self.sealed, self.sealed.count), SEALED_SLOT)
            if n < 0:
                self.d.seal_errors += 1
                continue
            connection.next_write_seq += 1
            self.d.sealed += 1
            self._queue_record(connection, n, udp_batch_addr(&self.tx, i),
                               udp_batch_addrlen(&self.tx, i))
        self.tx.count = 0
        if self.sealed.count:
            self.c.send_errors += udp_batch_send(self.fd, &self.sealed)

    cdef void _queue_record(self, DtlsConnection connection, Py_ssize_t length,
                            const sockaddr_storage* address, unsigned int address_length) noexcept:
        """The record of *connection* sealed into the next slot of the sealed batch goes out
        with it."""
        udp_batch_queue(&self.sealed, length, address, address_length)

    cdef void _send_record(self, DtlsConnection connection, const uint8_t* record,
                           Py_ssize_t length, const sockaddr_storage* address,
                           unsigned int address_length) noexcept:
        """Send a sealed record of *connection* now (after a flush: keeps the order)."""
        if udp_send_one(self.fd, record, length, address, address_length) < 0:
            self.c.send_errors += 1

    cdef void _send_now(self, int slot, const uint8_t* data, Py_ssize_t length) noexcept:
        cdef PyObject* owner = self.rx_connection[slot]
        cdef DtlsConnection connection
        cdef AeadCipher cipher
        cdef uint8_t* record
        cdef Py_ssize_t n
        if owner == NULL:
            self.d.seal_errors += 1
            return
        connection = <DtlsConnection>owner
        if length > connection.send_limit:
            self.d.oversized += 1
            return
        cipher = connection.cipher
        record = <uint8_t*>malloc(length + RECORD_OVERHEAD)
        if record == NULL or cipher is None:
            free(record)
            self.d.seal_errors += 1
            return
        n = cipher.seal_into(cipher.epoch, connection.next_write_seq, APPLICATION_DATA, data,
                             length, cipher.write_cid_data, cipher.write_cid_length, record,
                             length + RECORD_OVERHEAD)
        if n < 0:
            self.d.seal_errors += 1
        else:
            connection.next_write_seq += 1
            self.d.sealed += 1
            self._send_record(connection, record, n, udp_batch_addr(&self.rx, slot),
                              udp_batch_addrlen(&self.rx, slot))
        free(record)

    def send(self, data, address) -> bool:
        """Send one CoAP message to *address* now, sealed for its connection (separate
        responses, notifications, retransmissions). False when there is no session."""
        cdef sockaddr_storage storage
        cdef unsigned int storage_length = fill_sockaddr(&storage, address)
        cdef PyObject* found = PyDict_GetItem(self.by_address, _key_bytes(&storage))
        cdef DtlsConnection connection
        cdef bytes record
        if found == NULL or (<DtlsConnection>found).cipher is None:
            self.d.seal_errors += 1
            return False
        connection = <DtlsConnection>found
        if len(data) > connection.send_limit:      # the CoAP layer keeps below it: a bug
            self.d.oversized += 1
            return False
        self._flush()                               # keep the order of datagrams to the peer
        record = connection.cipher.seal(connection.cipher.epoch, connection.next_write_seq,
                                        APPLICATION_DATA, data)
        connection.next_write_seq += 1
        self.d.sealed += 1
        self._send_record(connection, <const uint8_t*>PyBytes_AS_STRING(record),
                          PyBytes_GET_SIZE(record), &storage, storage_length)
        return True

    def send_record(self, DtlsConnection connection not None, record) -> None:
        """Send a record the connector sealed for *connection* (e.g. an alert) to its address,
        after what is queued (keeps the order), the way the connection's answers go."""
        cdef const uint8_t[:] raw = record
        cdef sockaddr_storage address
        cdef unsigned int address_length = fill_sockaddr(&address, connection.address)
        if raw.shape[0] == 0:
            return
        self._flush()
        self._send_record(connection, &raw[0], raw.shape[0], &address, address_length)

    def datapath_counters(self) -> dict:
        return {
            "records": self.d.records,
            "slow records": self.d.slow_records,
            "mac errors": self.d.mac_errors,
            "mac filtered": self.d.mac_filtered,
            "replays": self.d.replays,
            "dropped": self.d.dropped,
            "filtered": self.d.filtered,
            "sealed": self.d.sealed,
            "seal errors": self.d.seal_errors,
            "oversized": self.d.oversized,
            "overflows": self.d.overflows,
        }

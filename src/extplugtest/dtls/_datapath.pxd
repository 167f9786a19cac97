# The DTLS data path in C: established connections' application records, from the socket to
# the CoAP engine and back, without Python objects per record.

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t

from extplugtest.coap._udp cimport RX_BATCH, TX_BATCH, UdpEngine
from extplugtest.dtls._cid_table cimport CidTable
from extplugtest.dtls._record cimport AeadCipher, RecordView
from extplugtest._net cimport sockaddr_storage, udp_batch

cdef enum:
    PEER_KEY_LENGTH = 24            # sizeof(PeerKey): address, scope, port, padding

cdef class DtlsConnection:
    cdef object _address                # (host, port[, flow, scope]) of the peer
    cdef uint8_t _key[PEER_KEY_LENGTH]  # the same address as a PeerKey
    cdef readonly bytes key             # ... and as bytes: the key of the by-address table
    cdef readonly bytes read_cid        # ours: tls12_cid records to us carry it
    cdef readonly AeadCipher cipher     # epoch-1 protection once established, else None
    cdef public unsigned long long next_write_seq
    cdef public object handshake        # ServerHandshake while it runs, or lingers
    cdef public object session          # handshake_server.Session once established
    cdef public bytes master_secret     # of the session, kept for a graceful restart
    cdef public object previous_address
    cdef public double started
    cdef public double last_seen        # of the newest authenticated or handshake record
    cdef public double positioned       # when it last went to the end of the LRU order
    # of the record processed last (for /mycontext):
    cdef public bint newest             # the newest authenticated one of this connection
    cdef public bint moved              # it moved the connection to a new address
    # Californium's MAC error filter (DTLS.MAC_ERROR_FILTER_*): bad MACs in a row, and when
    cdef public unsigned int mac_errors
    cdef public double last_mac_error
    # DTLS-CID cluster: the node that forwarded the newest record (-1: it came directly);
    # answers go back through it (cluster/_router.pyx)
    cdef public int router_node
    # Record sizes (RFC 8449 record_size_limit / RFC 6066 max_fragment_length, from the
    # session): the most CoAP bytes one record to the peer may carry, and the most plaintext
    # bytes a record from it may carry (above: a fatal record_overflow)
    cdef public int send_limit
    cdef public int receive_limit

    cdef bint mac_filtered(self, double now, unsigned int threshold, double quiet) noexcept
    cdef void mac_error(self, double now, double quiet) noexcept

cdef struct DataPathCounters:
    unsigned long long records          # application records opened in C
    unsigned long long slow_records     # handed to the Python connector
    unsigned long long mac_errors
    unsigned long long mac_filtered     # dropped unopened: too many MAC errors lately
    unsigned long long replays
    unsigned long long dropped          # failed to open for another reason, or truncated
    unsigned long long filtered         # dropped unparsed: the default datagram filter
    unsigned long long sealed
    unsigned long long seal_errors
    unsigned long long oversized        # not sent: above the peer's record size limit
    unsigned long long overflows        # received above our limit: record_overflow

cdef class DtlsEngine(UdpEngine):
    cdef CidTable by_cid                # read CID -> DtlsConnection
    cdef object by_address              # peer key -> DtlsConnection (an OrderedDict)
    cdef int cid_length
    cdef unsigned int mac_filter_threshold  # 0: no MAC error filter
    cdef double mac_filter_quiet
    cdef object connector               # the slow path: DtlsServerTransport
    cdef udp_batch sealed               # records of the tx batch, sealed
    cdef PyObject* rx_connection[RX_BATCH + 1]  # owner of each rx slot's plaintext (borrowed)
    cdef PyObject* tx_connection[TX_BATCH]      # ... of each queued response (a reference)
    cdef DataPathCounters d

    cdef int _slow(self, int slot, Py_ssize_t offset, Py_ssize_t length) except -1
    cdef bint _protected(self, int slot, RecordView* record, bint alone) except -1
    cdef int _deliver(self, int slot, DtlsConnection connection) except -1
    # Hooks of the DTLS-CID cluster (cluster/_router.pyx):
    cdef void _authenticated(self, int slot, DtlsConnection connection, bint newest) noexcept
    cdef void _queue_record(self, DtlsConnection connection, Py_ssize_t length,
                            const sockaddr_storage* address, unsigned int address_length) noexcept
    cdef void _send_record(self, DtlsConnection connection, const uint8_t* record,
                           Py_ssize_t length, const sockaddr_storage* address,
                           unsigned int address_length) noexcept

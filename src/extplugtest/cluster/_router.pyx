"""The DTLS-CID cluster router: the DTLS engine of a cluster node (inventory §5.2, §5.5, §5.6).

Behind a plain UDP load balancer a client's record may reach any node. The CID says which
node holds the keys: its first byte is the node id. ClusterEngine is the DtlsEngine of a node:

* a tls12_cid datagram whose CID names another node is *forwarded* to that node's management
  address as a cluster IN packet (type 63: the client's address, then the datagram as
  received), and not processed here; handshakes always stay on the node that got them, so
  the CID the client gets names that node;
* on the management socket, an IN packet from a known node is processed as if the client had
  sent it here, and the connection remembers that node as its router; answers to it go back
  as OUT packets (type 62: the client's address, then the sealed record) to the router, which
  sends the record to the client from its own DTLS socket, so the client and any NAT in
  between see the address they talk to (`backward`). Without backward (the load balancer
  re-points its entry, e.g. ``extnat -r``) the answer goes straight to the client;
* ping/pong and anything else on the management socket goes to the Python membership.

Batches (our extension, ``batch``): the packets of one flush that go to the same node leave in
one datagram (type 64, then per packet a 2-byte big-endian length and the packet), up to
BATCH_LIMIT bytes, so that the extra hop of a forwarded record costs a share of a datagram
instead of a whole one (the kernel's per-datagram cost dominates here). A packet is encoded
straight into the open batch datagram of its node (no copy at the flush). A single packet goes
as it is; ``batch=False`` sends every packet on its own, as Californium's nodes expect. IN and
OUT packets share one outbox; given ``defer`` (the loop's ``call_soon``) it is flushed once
after the event loop's round of socket callbacks, so the IN packets of the DTLS socket's
datagrams and the OUT packets answering another node's share their datagrams.

Every decision and header is C (cluster/_header.pyx); a packet from an address that is not a
known node's is dropped and counted, as are packets for unknown nodes. With the cluster MAC
(§5.3) every cluster packet carries 8 bytes of HMAC keyed per node pair from the management
DTLS session (``set_node_mac``); a packet whose MAC is missing or wrong is dropped and counted.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t
from libc.string cimport memcmp, memcpy, memmove, memset

from extplugtest.cluster._header cimport (
    CLUSTER_BATCH, CLUSTER_MAX_HEADER_LENGTH, CLUSTER_MAX_NODE_ID, CLUSTER_OK,
    CLUSTER_RECORD_INCOMING, CLUSTER_RECORD_OUTGOING, CLUSTER_ROUTE_LOCAL, ClusterMac,
    ClusterView, cluster_batch_next, cluster_decode, cluster_encode_sockaddr, cluster_route,
    cluster_view_sockaddr,
)
from extplugtest.coap._dedup cimport PeerKey
from extplugtest.coap._udp cimport RX_BATCH, SLOT_SIZE, TX_BATCH, peer_key_from_sockaddr
from extplugtest.dtls._datapath cimport DtlsConnection, DtlsEngine
from extplugtest._net cimport (
    address_tuple, fill_sockaddr, monotonic_now, sockaddr_storage, udp_batch, udp_batch_addr,
    udp_batch_buffer, udp_batch_free, udp_batch_init, udp_batch_length, udp_batch_queue,
    udp_batch_queued_length, udp_batch_recv, udp_batch_send, udp_batch_set,
    udp_batch_set_queued_length, udp_batch_truncated, udp_send_one,
)

cdef enum:
    NODES = CLUSTER_MAX_NODE_ID + 1
    # A cluster packet: header (with room for a MAC) plus a datagram or record.
    CLUSTER_SLOT = SLOT_SIZE + CLUSTER_MAX_HEADER_LENGTH + 64
    MANAGEMENT_BATCH = 64
    BATCH_LIMIT = 1400              # bytes of one: within a 1500-byte path MTU
    BATCH_HEADER = 3                # its type byte, and the first packet's length
    IN_SLOT = 0                     # rx slot of the record of an IN packet being processed

cdef struct ClusterCounters:
    # Californium's health names (§5.6)
    unsigned long long forwarded            # IN sent to the owner node
    unsigned long long process_forwarded    # IN received and processed here
    unsigned long long backwarded           # OUT sent to the router node
    unsigned long long send_backwarded      # OUT received, record sent to the client
    unsigned long long drop_forward         # for an unknown node, or does not fit
    unsigned long long drop_backward        # its router is gone, or does not fit
    unsigned long long bad_forward          # IN from no known node, or malformed
    unsigned long long bad_backward         # OUT from no known node, or malformed
    unsigned long long management_received  # ping/pong and others: the membership's
    unsigned long long batches_sent         # datagrams with several cluster packets
    unsigned long long batches_received
    unsigned long long cluster_datagrams    # datagrams with IN/OUT packets sent (batches too)


cdef class ClusterEngine(DtlsEngine):
    """The DtlsEngine of a cluster node (see the module text). ``cluster()`` sets the node id,
    the management socket and the membership callback; ``set_node()`` keeps the node table."""

    cdef int own_node_id
    cdef bint backward
    cdef bint with_mac                      # the cluster MAC (§5.3) on every cluster packet
    cdef bint batching                      # several packets to a node in one datagram
    cdef list write_macs                    # node id -> ClusterMac for packets to it, or None
    cdef list read_macs                     # node id -> ClusterMac for packets from it
    cdef int management_fd
    cdef object management                  # management(data, address): ping/pong & others
    cdef sockaddr_storage node_address[NODES]
    cdef unsigned int node_address_length[NODES]    # 0: unknown node
    cdef PeerKey node_key[NODES]
    cdef int known[NODES]                   # ids of the known nodes, known_count of them
    cdef int known_count
    cdef int rx_router[RX_BATCH + 1]        # node that forwarded rx slot's record, or -1
    cdef udp_batch outbox                   # datagrams of IN and OUT packets, to be sent
    cdef int open_slot[NODES]               # outbox slot of the batch a node's packets join
    cdef object defer                       # defer(callback): run it after this loop round
    cdef bint flush_deferred                # flush_cluster is scheduled
    cdef udp_batch management_rx
    cdef ClusterCounters k

    def __cinit__(self, *args, **kwargs):
        cdef int i
        self.own_node_id = -1
        self.management_fd = -1
        self.backward = True
        self.write_macs = [None] * NODES
        self.read_macs = [None] * NODES
        memset(self.node_address_length, 0, sizeof(self.node_address_length))
        memset(&self.k, 0, sizeof(ClusterCounters))
        for i in range(RX_BATCH + 1):
            self.rx_router[i] = -1
        for i in range(NODES):
            self.open_slot[i] = -1
        if (udp_batch_init(&self.outbox, TX_BATCH, CLUSTER_SLOT)
                or udp_batch_init(&self.management_rx, MANAGEMENT_BATCH, CLUSTER_SLOT)):
            raise MemoryError()

    def __dealloc__(self):
        udp_batch_free(&self.outbox)
        udp_batch_free(&self.management_rx)

    def cluster(self, int own_node_id, int management_fd, management not None, *,
                bint backward=True, bint mac=False, bint batch=True, defer=None) -> None:
        """Serve as node *own_node_id*; cluster packets go out of *management_fd* (whose
        ``on_management_readable`` the caller registers); other management datagrams go to
        ``management(data, address)``. With *mac*, packets to and from a node need its keys
        (``set_node_mac``). With *batch* and *defer* (``loop.call_soon``), cluster packets
        leave once per loop round instead of once per socket callback."""
        if not 0 <= own_node_id < NODES:
            raise ValueError(f"node id must be 0..{NODES - 1}")
        self.own_node_id = own_node_id
        self.management_fd = management_fd
        self.management = management
        self.backward = backward
        self.with_mac = mac
        self.batching = batch
        self.defer = defer

    def set_node_mac(self, int node_id, ClusterMac write, ClusterMac read) -> None:
        """The cluster MACs shared with node *node_id*: *write* signs packets to it, *read*
        checks packets from it (None: no keys, its packets are dropped)."""
        if not 0 <= node_id < NODES:
            raise ValueError(f"node id must be 0..{NODES - 1}")
        if write is None or read is None:
            self.write_macs[node_id] = self.read_macs[node_id] = None
            return
        self.write_macs[node_id] = write
        self.read_macs[node_id] = read

    cdef bint _sign(self, int node, uint8_t* packet, Py_ssize_t length) noexcept:
        """MAC a packet to *node* (True without the MAC); False: no keys for it yet."""
        cdef object mac
        if not self.with_mac:
            return True
        mac = self.write_macs[node]
        return mac is not None and (<ClusterMac>mac).sign(packet, length) == CLUSTER_OK

    cdef bint _verified(self, int node, const ClusterView* view) noexcept:
        cdef object mac
        if not self.with_mac:
            return True
        mac = self.read_macs[node]
        return mac is not None and (<ClusterMac>mac).verify(view) == CLUSTER_OK

    def set_node(self, int node_id, address) -> None:
        """Node *node_id* is at management *address* now (None: it is gone)."""
        cdef int i
        if not 0 <= node_id < NODES or node_id == self.own_node_id:
            raise ValueError(f"not another node's id: {node_id}")
        self.open_slot[node_id] = -1                # what is queued goes where it was going
        if address is None:
            if self.node_address_length[node_id]:
                self.node_address_length[node_id] = 0
                for i in range(self.known_count):
                    if self.known[i] == node_id:
                        self.known_count -= 1
                        self.known[i] = self.known[self.known_count]
                        break
            return
        if not self.node_address_length[node_id]:
            self.known[self.known_count] = node_id
            self.known_count += 1
        self.node_address_length[node_id] = fill_sockaddr(&self.node_address[node_id], address)
        peer_key_from_sockaddr(&self.node_key[node_id], &self.node_address[node_id])

    def nodes(self) -> dict:
        """The node table: node id -> management address."""
        return {self.known[i]: address_tuple(&self.node_address[self.known[i]])
                for i in range(self.known_count)}

    cdef int _node_at(self, const sockaddr_storage* address) noexcept:
        """The id of the known node whose management address this is, or -1."""
        cdef PeerKey key
        cdef int i
        peer_key_from_sockaddr(&key, address)
        for i in range(self.known_count):
            if memcmp(&key, &self.node_key[self.known[i]], sizeof(PeerKey)) == 0:
                return self.known[i]
        return -1

    # -- the external DTLS socket: forward what belongs to another node -----------------------
    cdef int _receive(self, int slot) except -1:
        cdef const uint8_t* data = udp_batch_buffer(&self.rx, slot)
        cdef Py_ssize_t length = udp_batch_length(&self.rx, slot)
        cdef int node
        cdef Py_ssize_t n
        cdef uint8_t* packet
        self.rx_router[slot] = -1
        if self.own_node_id < 0 or udp_batch_truncated(&self.rx, slot):
            return DtlsEngine._receive(self, slot)
        node = cluster_route(data, length, self.cid_length, self.own_node_id)
        if node == CLUSTER_ROUTE_LOCAL:
            return DtlsEngine._receive(self, slot)
        if not self.node_address_length[node]:
            self.k.drop_forward += 1                # §5.5: a foreign node we do not know
            return 0
        packet = self._packet_room(node, length)
        n = cluster_encode_sockaddr(CLUSTER_RECORD_INCOMING, udp_batch_addr(&self.rx, slot),
                                    data, length, self.with_mac, packet,
                                    length + CLUSTER_MAX_HEADER_LENGTH)
        if n < 0 or not self._sign(node, packet, n):
            self.k.drop_forward += 1
            return 0
        self._packet_queued(node, packet, n)
        self.k.forwarded += 1
        return 0

    cdef void _authenticated(self, int slot, DtlsConnection connection, bint newest) noexcept:
        if newest:                                  # answers follow the newest record's path
            connection.router_node = self.rx_router[slot]

    # -- answers: back through the router ----------------------------------------------------
    cdef bint _goes_back(self, DtlsConnection connection) noexcept:
        """Do this connection's records go back through the node that forwarded its last one?"""
        return self.backward and connection.router_node >= 0

    cdef Py_ssize_t _backward_packet(self, DtlsConnection connection, const uint8_t* record,
                                     Py_ssize_t length, const sockaddr_storage* client,
                                     uint8_t* out) noexcept:
        """The OUT packet of a record for a forwarded connection (_goes_back) in *out*, which
        has room for the record and a header: its length, or -1 when it cannot go (counted)."""
        cdef int router = connection.router_node
        cdef Py_ssize_t n
        if not self.node_address_length[router]:
            self.k.drop_backward += 1               # the router is gone
            return -1
        n = cluster_encode_sockaddr(CLUSTER_RECORD_OUTGOING, client, record, length,
                                    self.with_mac, out, length + CLUSTER_MAX_HEADER_LENGTH)
        if n < 0 or not self._sign(router, out, n):
            self.k.drop_backward += 1
            return -1
        self.k.backwarded += 1
        return n

    cdef void _queue_record(self, DtlsConnection connection, Py_ssize_t length,
                            const sockaddr_storage* address, unsigned int address_length) noexcept:
        cdef Py_ssize_t n
        cdef uint8_t* packet
        if not self._goes_back(connection):
            DtlsEngine._queue_record(self, connection, length, address, address_length)
            return
        packet = self._packet_room(connection.router_node, length)
        n = self._backward_packet(connection, udp_batch_buffer(&self.sealed, self.sealed.count),
                                  length, address, packet)
        if n > 0:
            self._packet_queued(connection.router_node, packet, n)

    cdef void _send_record(self, DtlsConnection connection, const uint8_t* record,
                           Py_ssize_t length, const sockaddr_storage* address,
                           unsigned int address_length) noexcept:
        cdef uint8_t packet[CLUSTER_SLOT]
        cdef Py_ssize_t n
        if not self._goes_back(connection):
            DtlsEngine._send_record(self, connection, record, length, address, address_length)
            return
        if length > SLOT_SIZE:                      # no room for a header: it cannot go back
            self.k.drop_backward += 1
            return
        n = self._backward_packet(connection, record, length, address, packet)
        if n > 0:                                   # after what waits, in order
            self._send_cluster()
            self.k.cluster_datagrams += 1
            if udp_send_one(self.management_fd, packet, n,
                            &self.node_address[connection.router_node],
                            self.node_address_length[connection.router_node]) < 0:
                self.c.send_errors += 1

    # -- the outbox: cluster packets, to the same node together in batch datagrams ------------
    cdef uint8_t* _packet_room(self, int node, Py_ssize_t record_length) noexcept:
        """Where the next packet to *node* (a record of *record_length* plus its header) is
        encoded: behind the packets of the batch to *node* while it stays within BATCH_LIMIT,
        else at the start of a new datagram (after room for a batch header when batching).
        _packet_queued then takes it."""
        cdef int slot = self.open_slot[node]
        cdef Py_ssize_t used
        if slot >= 0:
            used = udp_batch_queued_length(&self.outbox, slot)
            if used + 2 + record_length + CLUSTER_MAX_HEADER_LENGTH <= BATCH_LIMIT:
                return udp_batch_buffer(&self.outbox, slot) + used + 2
        if self.outbox.count == self.outbox.capacity:
            self._send_cluster()
        return udp_batch_buffer(&self.outbox, self.outbox.count) + (
            BATCH_HEADER if self.batching else 0)

    cdef void _packet_queued(self, int node, uint8_t* packet, Py_ssize_t length) noexcept:
        """The packet to *node* encoded where _packet_room said is complete."""
        cdef int slot = self.open_slot[node]
        cdef uint8_t* start = udp_batch_buffer(&self.outbox, self.outbox.count)
        if not self.batching:
            udp_batch_queue(&self.outbox, length, &self.node_address[node],
                            self.node_address_length[node])
            return
        (packet - 2)[0] = length >> 8               # each packet: 2-byte length, then it
        (packet - 1)[0] = length & 0xFF
        if packet != start + BATCH_HEADER:          # joined the open batch
            udp_batch_set_queued_length(
                &self.outbox, slot, udp_batch_queued_length(&self.outbox, slot) + 2 + length)
            return
        start[0] = CLUSTER_BATCH
        self.open_slot[node] = self.outbox.count
        udp_batch_queue(&self.outbox, BATCH_HEADER + length, &self.node_address[node],
                        self.node_address_length[node])

    cdef void _send_cluster(self) noexcept:
        """Send the outbox: a batch of one packet (its first length covers all of it) goes as
        the packet alone, what a node without batches reads too."""
        cdef int i
        cdef uint8_t* out
        cdef Py_ssize_t size
        if not self.outbox.count:
            return
        for i in range(self.known_count):           # (set_node closes a leaving node's)
            self.open_slot[self.known[i]] = -1
        if self.batching:
            for i in range(self.outbox.count):
                out = udp_batch_buffer(&self.outbox, i)
                size = udp_batch_queued_length(&self.outbox, i) - BATCH_HEADER
                if (out[1] << 8 | out[2]) != size:
                    self.k.batches_sent += 1
                    continue
                memmove(out, out + BATCH_HEADER, size)
                udp_batch_set_queued_length(&self.outbox, i, size)
        self.k.cluster_datagrams += self.outbox.count
        self.c.send_errors += udp_batch_send(self.management_fd, &self.outbox)

    cdef void _flush(self) noexcept:
        DtlsEngine._flush(self)
        if not self.outbox.count or self.flush_deferred:
            return
        if self.batching and self.defer is not None:
            try:
                self.defer(self.flush_cluster)
                self.flush_deferred = True
                return
            except Exception:                       # (a closed loop): send now
                pass
        self._send_cluster()

    def flush_cluster(self) -> None:
        """Send the cluster packets that wait (the deferred flush of a loop round)."""
        self.flush_deferred = False
        self._send_cluster()

    # -- the management socket ---------------------------------------------------------------
    def on_management_readable(self):
        """Drain the management socket (bounded per call): cluster packets in C, the rest to
        the membership."""
        cdef int n, i, rounds = 0
        if self.management_fd < 0:
            return
        while rounds < 8:
            n = udp_batch_recv(self.management_fd, &self.management_rx)
            if n <= 0:
                break
            self.now = monotonic_now()
            for i in range(n):
                try:
                    self._management_packet(i)
                except Exception:
                    self.c.handler_errors += 1
                self.current = NULL
            self._flush()
            rounds += 1
            if n < MANAGEMENT_BATCH:
                break

    cdef int _management_packet(self, int index) except -1:
        cdef const uint8_t* data = udp_batch_buffer(&self.management_rx, index)
        cdef Py_ssize_t length = udp_batch_length(&self.management_rx, index)
        cdef sockaddr_storage* sender = udp_batch_addr(&self.management_rx, index)
        cdef Py_ssize_t offset = 1, size
        cdef const uint8_t* packet
        cdef int node, status
        if udp_batch_truncated(&self.management_rx, index) or length == 0:
            self.k.bad_forward += 1
            return 0
        if data[0] == CLUSTER_BATCH:
            node = self._node_at(sender)
            if node < 0:
                self.k.bad_forward += 1             # no batches from strangers
                return 0
            self.k.batches_received += 1
            while True:                             # bounded: each step takes >= 3 bytes
                status = cluster_batch_next(data, length, &offset, &packet, &size)
                if status <= 0:
                    if status < 0:
                        self.k.bad_forward += 1
                    return 0
                self._cluster_packet(packet, size, node)
        if data[0] != CLUSTER_RECORD_INCOMING and data[0] != CLUSTER_RECORD_OUTGOING:
            self.k.management_received += 1
            self.management(PyBytes_FromStringAndSize(<const char*>data, length),
                            address_tuple(sender))
            return 0
        return self._cluster_packet(data, length, self._node_at(sender))

    cdef int _cluster_packet(self, const uint8_t* data, Py_ssize_t length, int node) except -1:
        """One IN or OUT packet from node *node* (-1: not from a known node)."""
        cdef ClusterView view
        cdef sockaddr_storage client
        cdef unsigned int client_length
        if (node < 0 or cluster_decode(data, length, self.with_mac, &view) != CLUSTER_OK
                or view.record_length > SLOT_SIZE or not self._verified(node, &view)):
            if data[0] == CLUSTER_RECORD_INCOMING:  # forged, or not from a cluster node
                self.k.bad_forward += 1
            else:
                self.k.bad_backward += 1
            return 0
        client_length = cluster_view_sockaddr(&view, &client)
        if view.type == CLUSTER_RECORD_INCOMING:
            # As if the client had sent it here; the connection remembers the router.
            udp_batch_set(&self.rx, IN_SLOT, view.record, view.record_length, &client,
                          client_length)
            self.rx_router[IN_SLOT] = node
            self.k.process_forwarded += 1
            DtlsEngine._receive(self, IN_SLOT)
            self.rx_router[IN_SLOT] = -1
            return 0
        # OUT: the owner's record to our client, from our DTLS socket.
        if self.sealed.count == self.sealed.capacity:
            self.c.send_errors += udp_batch_send(self.fd, &self.sealed)
        memcpy(udp_batch_buffer(&self.sealed, self.sealed.count), view.record,
               view.record_length)
        udp_batch_queue(&self.sealed, view.record_length, &client, client_length)
        self.k.send_backwarded += 1
        return 0

    def cluster_counters(self) -> dict:
        return {
            "forwarded": self.k.forwarded,
            "process forwarded": self.k.process_forwarded,
            "backwarded": self.k.backwarded,
            "send backwarded": self.k.send_backwarded,
            "drop forward": self.k.drop_forward,
            "drop backward": self.k.drop_backward,
            "bad forward": self.k.bad_forward,
            "bad backward": self.k.bad_backward,
            "management received": self.k.management_received,
            "batches sent": self.k.batches_sent,
            "batches received": self.k.batches_received,
            "cluster datagrams sent": self.k.cluster_datagrams,
        }

    def mac_counters(self) -> dict:
        """Per node with keys: packets signed for it, verified from it, failed from it."""
        return {
            node: {"signed": (<ClusterMac>self.write_macs[node]).signed_packets,
                   "verified": (<ClusterMac>self.read_macs[node]).verified_packets,
                   "failed": (<ClusterMac>self.read_macs[node]).mac_failures}
            for node in range(NODES) if self.write_macs[node] is not None
        }

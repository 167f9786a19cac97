# The forwarding core of extnat, C level (see _natfwd.pyx).
#
# A Forwarder owns the NAT table (entries keyed by client address, each with its own outgoing
# socket), the destination table and the batches of the front (listen) sockets. Python decides
# when to expire entries and how destinations age; everything per datagram happens here.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

from extplugtest._net cimport sockaddr_storage, udp_batch

cdef extern from "<sys/epoll.h>":
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

cdef enum:
    MAX_DESTINATIONS = 256
    MAX_FRONTS = 16

cdef enum DestState:
    DEST_FREE = 0       # slot unused
    DEST_ACTIVE = 1     # takes new entries
    DEST_STALE = 2      # sent to, but no answer within the load-balancer timeout
    DEST_PROBING = 3    # stale for another timeout: the next new entry tries it
    DEST_PENDING = 4    # handed to an entry as a probe, waiting for an answer
    DEST_REMOVED = 5    # removed by the console; kept while entries still point at it

cdef struct NatKey:
    # A client or destination address in one comparable form (IPv4 as ::ffff:a.b.c.d).
    uint8_t address[16]
    uint32_t scope_id
    uint16_t port
    uint16_t zero       # explicit padding, always 0, so that keys compare with memcmp

cdef struct Entry:
    NatKey key
    sockaddr_storage client     # where backward datagrams go, as the front socket saw it
    uint32_t client_len
    int fd                      # outgoing socket; -1: slot free
    int family                  # of fd (follows the destination's family)
    int front                   # front socket that received the client first
    int dest                    # destination slot
    int32_t next                # hash chain, or free list
    bint first                  # next forward is the first after an assignment: no fail-over
    uint16_t local_port
    double used                 # last forward or backward (monotonic seconds)

cdef struct Dest:
    sockaddr_storage addr
    uint32_t addrlen
    NatKey key
    int state
    int usage                   # entries that point here
    double send_since           # first send after the last answer; 0: nothing unanswered
    double since                # last state change

cdef struct Faults:
    uint64_t loss               # drop chance as a threshold on 32 random bits; 0: off
    Py_ssize_t max_size         # larger datagrams are dropped (with size_chance); 0: off
    uint64_t size_chance
    double delay                # seconds; delay and jitter 0: off
    double jitter
    uint64_t delay_chance

cdef struct NatCounters:
    uint64_t forward_received
    uint64_t forwarded
    uint64_t forward_send_errors
    uint64_t forward_dropped_loss
    uint64_t forward_dropped_size
    uint64_t forward_dropped_filter
    uint64_t forward_dropped_table_full
    uint64_t forward_dropped_no_destination
    uint64_t forward_delayed
    uint64_t forward_truncated
    uint64_t backward_received
    uint64_t backwarded
    uint64_t backward_send_errors
    uint64_t backward_dropped_loss
    uint64_t backward_dropped_size
    uint64_t backward_delayed
    uint64_t wrong_routed
    uint64_t wrong_routed_dropped
    uint64_t reverse_updates
    uint64_t delayed_dropped
    uint64_t recv_errors
    uint64_t entries_created
    uint64_t entries_expired
    uint64_t entries_closed
    uint64_t entry_socket_errors
    uint64_t failovers
    uint64_t destinations_revived


cdef class Forwarder:
    cdef Entry* entries
    cdef int32_t* buckets
    cdef uint32_t bucket_mask
    cdef readonly int max_entries
    cdef readonly int count
    cdef int32_t free_head
    cdef Dest dests[MAX_DESTINATIONS]
    cdef int active[MAX_DESTINATIONS]   # slots in state ACTIVE, for the random choice
    cdef int active_count
    cdef int front_fds[MAX_FRONTS]
    cdef udp_batch tx[MAX_FRONTS]       # backward datagrams, one batch per front socket
    cdef int front_count
    cdef udp_batch rx                   # forward datagrams from a front socket
    cdef readonly int epoll_fd          # all outgoing sockets; registered with the event loop
    cdef epoll_event* events
    cdef uint64_t hash_seed
    cdef uint64_t rng
    cdef Faults faults[2]
    cdef public bint reverse
    cdef public bint dtls_filter
    cdef NatCounters c
    cdef object scheduler
    cdef readonly int waiting           # delayed datagrams not sent yet
    cdef readonly int max_delayed
    cdef double now
    cdef bint closed

    cdef void _close_all(self) noexcept
    cdef int _check_slot(self, int slot) except -1
    cdef uint64_t _random(self) noexcept
    cdef bint _chance(self, uint64_t threshold) noexcept
    cdef int32_t _lookup(self, const NatKey* key) noexcept
    cdef int32_t _create(self, const NatKey* key, const sockaddr_storage* client,
                         uint32_t client_len, int front, int dest) noexcept
    cdef void _close(self, int32_t index) noexcept
    cdef int _open_outgoing(self, int family, int32_t index, uint16_t* port) noexcept
    cdef int _assign(self, int32_t index, int dest) noexcept
    cdef int _choose(self) noexcept
    cdef void _rebuild_active(self) noexcept
    cdef void _unuse(self, int dest) noexcept
    cdef void _answered(self, int dest) noexcept
    cdef int _find_destination(self, const NatKey* key) noexcept
    cdef int _forward(self, int front, int slot) except -1
    cdef int _backward(self, int32_t index) except -1
    cdef int _backward_one(self, int32_t index, int slot) except -1
    cdef int _schedule(self, int direction, const uint8_t* data, Py_ssize_t length,
                       int front, const sockaddr_storage* addr, uint32_t addrlen) except -1
    cdef void _flush(self, int front) noexcept

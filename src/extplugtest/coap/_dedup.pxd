# Deduplication cache (RFC 7252 section 4.5), C level.
#
# Remembers, per peer, the last N requests by MID with the response that was sent, so that a
# duplicate is answered from the cache instead of running the handler again. Bounded like
# Californium's PEERS_MARK_AND_SWEEP: N messages per peer (older ones are overwritten early),
# and at most max_peers peers (the least recently active peer is evicted; "recently" to
# within a second). A DTLS connection that moves by its CID takes its peer along (move_peer).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef struct PeerKey:
    uint8_t address[16]         # IPv6, or IPv4-mapped IPv6
    uint32_t scope_id
    uint16_t port
    uint16_t padding            # always 0, so that memcmp over the struct is exact

cdef enum ExchangeState:
    SLOT_FREE = 0
    SLOT_PENDING = 1            # request seen, no response sent yet
    SLOT_ANSWERED = 2           # response (or empty ACK) cached

cdef struct Exchange:
    double stamp                # monotonic seconds when the request arrived
    uint8_t* response
    uint16_t response_length
    uint16_t response_capacity  # (its MID is the peer's mids[] entry of the same index)
    uint8_t state
    uint8_t confirmable

cdef struct Peer:
    # What a lookup reads first, together: the chain walk (hash, key) and the MIDs of its
    # slots (mids[i] is slots[i].mid), so that a new request touches one or two cache lines
    # of its peer rather than every slot (it pays on a server whose caches went cold).
    PeerKey key
    uint64_t hash
    Peer* bucket_next
    uint16_t* mids              # messages_per_peer of them, right behind this struct
    Peer* lru_newer
    Peer* lru_older
    double last_seen
    double promoted             # when it last went to the front of the LRU list
    uint32_t next_slot
    Exchange* slots

cdef class DeduplicationCache:
    cdef Peer** buckets
    cdef uint64_t bucket_mask
    cdef Peer* lru_newest
    cdef Peer* lru_oldest
    cdef uint64_t seed
    cdef readonly Py_ssize_t peer_count
    cdef readonly Py_ssize_t max_peers
    cdef readonly int messages_per_peer
    cdef readonly double exchange_lifetime
    cdef readonly double non_lifetime
    cdef readonly double peer_inactivity
    # counters
    cdef readonly unsigned long long peers_added
    cdef readonly unsigned long long peers_evicted
    cdef readonly unsigned long long peers_expired
    cdef readonly unsigned long long exchanges_remembered
    cdef readonly unsigned long long exchanges_overwritten
    cdef readonly unsigned long long duplicates
    cdef readonly unsigned long long peers_moved

    cdef Peer* peer(self, const PeerKey* key, double now) noexcept
    cdef Exchange* find(self, Peer* peer, uint16_t mid, double now) noexcept
    cdef Exchange* remember(self, Peer* peer, uint16_t mid, bint confirmable,
                            double now) noexcept
    cdef bint store_response(self, Exchange* exchange, const uint8_t* data,
                             Py_ssize_t length) noexcept
    cdef Peer* lookup(self, const PeerKey* key) noexcept
    cdef bint move_peer(self, const PeerKey* old_key, const PeerKey* new_key) noexcept
    cdef Exchange* _live(self, Peer* peer, uint16_t mid, double now) noexcept
    cdef void _unlink(self, Peer* peer) noexcept
    cdef void _free_peer(self, Peer* peer) noexcept
    cdef void _grow(self) noexcept
    cdef void _unlink_bucket_and_free(self, Peer* peer) noexcept

cdef int fill_key_from_address(PeerKey* key, object address) except -1

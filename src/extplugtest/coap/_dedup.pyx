"""Deduplication cache: bounded per peer and in the number of peers (see _dedup.pxd)."""

from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy

from socket import AF_INET, AF_INET6, inet_pton


cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char* buf, int num)

from extplugtest._openssl_init cimport extplugtest_openssl_init

extplugtest_openssl_init()  # before any other libcrypto call (csrc/openssl_init.h)


# A peer goes to the front of the LRU list at most once per this many seconds: the order is
# exact to within it (eviction and sweep are about peers idle for minutes), and a request of
# an active peer does not touch its two list neighbours, cache lines of other peers.
cdef double PROMOTE_INTERVAL = 1.0


cdef inline uint64_t _hash_key(const PeerKey* key, uint64_t seed) noexcept nogil:
    # 64-bit multiply-xorshift over the 24-byte key, seeded per cache (from RAND_bytes) so that
    # an attacker cannot aim many addresses at one bucket.
    cdef const uint64_t* words = <const uint64_t*>key
    cdef uint64_t h = seed
    cdef int i
    for i in range(sizeof(PeerKey) // 8):
        h ^= words[i]
        h *= 0x9E3779B97F4A7C15ULL
        h ^= h >> 29
    return h


cdef class DeduplicationCache:
    """Per-peer request memory with cached responses.

    ``messages_per_peer``: requests remembered per peer (Californium's
    PEERS_MARK_AND_SWEEP_MESSAGES); ``max_peers``: peers remembered at once (MAX_ACTIVE_PEERS);
    ``exchange_lifetime`` / ``non_lifetime``: how long a CON / NON request counts (247 s /
    145 s); ``peer_inactivity``: peers idle this long are removed by ``sweep()``.
    """

    def __cinit__(self, Py_ssize_t max_peers=100000, int messages_per_peer=16,
                  double exchange_lifetime=247.0, double non_lifetime=145.0,
                  double peer_inactivity=180.0):
        if max_peers < 1 or messages_per_peer < 1:
            raise ValueError("max_peers and messages_per_peer must be positive")
        self.max_peers = max_peers
        self.messages_per_peer = messages_per_peer
        self.exchange_lifetime = exchange_lifetime
        self.non_lifetime = non_lifetime
        self.peer_inactivity = peer_inactivity
        self.bucket_mask = 1023
        self.buckets = <Peer**>calloc(self.bucket_mask + 1, sizeof(Peer*))
        if self.buckets == NULL:
            raise MemoryError()
        if RAND_bytes(<unsigned char*>&self.seed, sizeof(self.seed)) != 1:
            raise RuntimeError("OpenSSL RAND_bytes failed")

    def __dealloc__(self):
        cdef Peer* peer = self.lru_newest
        cdef Peer* older
        while peer != NULL:
            older = peer.lru_older
            self._free_peer(peer)
            peer = older
        free(self.buckets)

    # -- C level ----------------------------------------------------------------------------
    cdef Peer* lookup(self, const PeerKey* key) noexcept:
        cdef uint64_t h = _hash_key(key, self.seed)
        cdef Peer* peer = self.buckets[h & self.bucket_mask]
        while peer != NULL:
            if peer.hash == h and memcmp(&peer.key, key, sizeof(PeerKey)) == 0:
                return peer
            peer = peer.bucket_next
        return NULL

    cdef Peer* peer(self, const PeerKey* key, double now) noexcept:
        """The peer's entry, created (evicting the least recently active peer) if needed.
        Returns NULL only when memory is exhausted."""
        cdef uint64_t h = _hash_key(key, self.seed)
        cdef Peer** bucket = &self.buckets[h & self.bucket_mask]
        cdef Peer* peer = bucket[0]
        while peer != NULL:
            if peer.hash == h and memcmp(&peer.key, key, sizeof(PeerKey)) == 0:
                peer.last_seen = now
                if peer != self.lru_newest and now - peer.promoted >= PROMOTE_INTERVAL:
                    peer.promoted = now         # to the front of the LRU list
                    self._unlink(peer)
                    peer.lru_older = self.lru_newest
                    peer.lru_newer = NULL
                    self.lru_newest.lru_newer = peer
                    self.lru_newest = peer
                    if self.lru_oldest == NULL:
                        self.lru_oldest = peer
                return peer
            peer = peer.bucket_next
        if self.peer_count >= self.max_peers:
            self._unlink_bucket_and_free(self.lru_oldest)
            self.peers_evicted += 1
        elif self.peer_count > <Py_ssize_t>self.bucket_mask:
            self._grow()
        bucket = &self.buckets[h & self.bucket_mask]
        peer = <Peer*>calloc(1, sizeof(Peer) + self.messages_per_peer * sizeof(uint16_t))
        if peer == NULL:
            return NULL
        peer.mids = <uint16_t*>(<char*>peer + sizeof(Peer))
        peer.slots = <Exchange*>calloc(self.messages_per_peer, sizeof(Exchange))
        if peer.slots == NULL:
            free(peer)
            return NULL
        memcpy(&peer.key, key, sizeof(PeerKey))
        peer.hash = h
        peer.last_seen = now
        peer.promoted = now
        peer.bucket_next = bucket[0]
        bucket[0] = peer
        peer.lru_older = self.lru_newest
        if self.lru_newest != NULL:
            self.lru_newest.lru_newer = peer
        self.lru_newest = peer
        if self.lru_oldest == NULL:
            self.lru_oldest = peer
        self.peer_count += 1
        self.peers_added += 1
        return peer

    cdef bint move_peer(self, const PeerKey* old_key, const PeerKey* new_key) noexcept:
        """The peer at *old_key* is at *new_key* now (a DTLS connection identified by its CID
        moved, RFC 9146 §6): its exchanges go with it, so that a retransmission from the new
        address is still a duplicate (RFC 7252 §4.5: the endpoint is the same) and the old
        address leaves no stale entry behind. An entry already at *new_key* was another
        endpoint's (the address was reused): it goes. False: nothing known at *old_key*."""
        cdef Peer* peer = self.lookup(old_key)
        cdef Peer* there
        cdef Peer** link
        cdef uint64_t h
        if peer == NULL or memcmp(old_key, new_key, sizeof(PeerKey)) == 0:
            return False
        there = self.lookup(new_key)
        if there != NULL:
            self._unlink_bucket_and_free(there)
        link = &self.buckets[peer.hash & self.bucket_mask]
        while link[0] != peer:                  # (lookup found it in this chain)
            link = &link[0].bucket_next
        link[0] = peer.bucket_next
        h = _hash_key(new_key, self.seed)
        memcpy(&peer.key, new_key, sizeof(PeerKey))
        peer.hash = h
        peer.bucket_next = self.buckets[h & self.bucket_mask]
        self.buckets[h & self.bucket_mask] = peer
        self.peers_moved += 1
        return True

    cdef Exchange* find(self, Peer* peer, uint16_t mid, double now) noexcept:
        """The live exchange for *mid* (a duplicate), or NULL; counted."""
        cdef Exchange* ex = self._live(peer, mid, now)
        if ex != NULL:
            self.duplicates += 1
        return ex

    cdef Exchange* remember(self, Peer* peer, uint16_t mid, bint confirmable,
                            double now) noexcept:
        """Take the peer's next slot for a new request (overwriting the oldest one)."""
        cdef Exchange* ex = &peer.slots[peer.next_slot]
        peer.next_slot += 1
        if peer.next_slot == <uint32_t>self.messages_per_peer:
            peer.next_slot = 0
        if ex.state != SLOT_FREE and now - ex.stamp <= (self.exchange_lifetime if ex.confirmable
                                                        else self.non_lifetime):
            self.exchanges_overwritten += 1
        peer.mids[ex - peer.slots] = mid
        ex.stamp = now
        ex.confirmable = confirmable
        ex.state = SLOT_PENDING
        ex.response_length = 0
        self.exchanges_remembered += 1
        return ex

    cdef Exchange* _live(self, Peer* peer, uint16_t mid, double now) noexcept:
        cdef int i
        cdef Exchange* ex
        for i in range(self.messages_per_peer):
            if peer.mids[i] != mid:             # (the compact copy: no slot touched)
                continue
            ex = &peer.slots[i]
            # An expired entry with this MID does not count, but a newer one may follow:
            # a MID may be reused once its exchange has expired (§4.4).
            if ex.state != SLOT_FREE and now - ex.stamp <= (
                    self.exchange_lifetime if ex.confirmable else self.non_lifetime):
                return ex
        return NULL

    cdef bint store_response(self, Exchange* ex, const uint8_t* data,
                             Py_ssize_t length) noexcept:
        cdef uint8_t* grown
        if length > 0xFFFF:
            return False
        if length > ex.response_capacity:
            grown = <uint8_t*>realloc(ex.response, length)
            if grown == NULL:
                return False
            ex.response = grown
            ex.response_capacity = <uint16_t>length
        memcpy(ex.response, data, length)
        ex.response_length = <uint16_t>length
        ex.state = SLOT_ANSWERED
        return True

    cdef void _unlink(self, Peer* peer) noexcept:
        """Take *peer* out of the LRU list."""
        if peer.lru_newer != NULL:
            peer.lru_newer.lru_older = peer.lru_older
        else:
            self.lru_newest = peer.lru_older
        if peer.lru_older != NULL:
            peer.lru_older.lru_newer = peer.lru_newer
        else:
            self.lru_oldest = peer.lru_newer
        peer.lru_newer = NULL
        peer.lru_older = NULL

    cdef void _unlink_bucket_and_free(self, Peer* peer) noexcept:
        cdef Peer** link = &self.buckets[peer.hash & self.bucket_mask]
        while link[0] != NULL and link[0] != peer:
            link = &link[0].bucket_next
        if link[0] == peer:
            link[0] = peer.bucket_next
        self._unlink(peer)
        self._free_peer(peer)
        self.peer_count -= 1

    cdef void _free_peer(self, Peer* peer) noexcept:
        cdef int i
        for i in range(self.messages_per_peer):
            free(peer.slots[i].response)
        free(peer.slots)
        free(peer)

    cdef void _grow(self) noexcept:
        cdef uint64_t new_mask = self.bucket_mask * 2 + 1
        cdef Peer** fresh = <Peer**>calloc(new_mask + 1, sizeof(Peer*))
        cdef Peer* peer
        cdef Peer* nxt
        cdef uint64_t i
        if fresh == NULL:
            return                      # keep the old table; chains just get longer
        for i in range(self.bucket_mask + 1):
            peer = self.buckets[i]
            while peer != NULL:
                nxt = peer.bucket_next
                peer.bucket_next = fresh[peer.hash & new_mask]
                fresh[peer.hash & new_mask] = peer
                peer = nxt
        free(self.buckets)
        self.buckets = fresh
        self.bucket_mask = new_mask

    # -- Python level -----------------------------------------------------------------------
    def sweep(self, double now) -> int:
        """Remove peers idle for longer than ``peer_inactivity``; returns how many."""
        cdef int removed = 0
        while self.lru_oldest != NULL and now - self.lru_oldest.last_seen > self.peer_inactivity:
            self._unlink_bucket_and_free(self.lru_oldest)
            removed += 1
        self.peers_expired += removed
        return removed

    def duplicate_of(self, address, int mid, double now):
        """Python view of a lookup: None for a new request, else the cached response bytes
        (b"" while the response is still pending). Marks the peer active, like the engine."""
        cdef PeerKey key
        fill_key_from_address(&key, address)
        cdef Peer* peer = self.peer(&key, now)
        if peer == NULL:
            raise MemoryError()
        cdef Exchange* ex = self.find(peer, mid, now)
        if ex == NULL:
            return None
        return (<char*>ex.response)[:ex.response_length] if ex.state == SLOT_ANSWERED else b""

    def record(self, address, int mid, bint confirmable, double now, response=None):
        """Python view of remember (+ store_response when *response* is given)."""
        cdef PeerKey key
        cdef const unsigned char[:] raw
        fill_key_from_address(&key, address)
        cdef Peer* peer = self.peer(&key, now)
        if peer == NULL:
            raise MemoryError()
        cdef Exchange* ex = self.remember(peer, mid, confirmable, now)
        if response is not None and len(response):
            raw = response
            self.store_response(ex, &raw[0], raw.shape[0])

    def move(self, old_address, new_address) -> bool:
        """Python view of move_peer."""
        cdef PeerKey old_key, new_key
        fill_key_from_address(&old_key, old_address)
        fill_key_from_address(&new_key, new_address)
        return self.move_peer(&old_key, &new_key)

    def update_response(self, address, int mid, response, double now) -> bool:
        """Replace the cached response of a live exchange (a separate response that became
        ready after the empty ACK); False when the exchange is gone."""
        cdef PeerKey key
        cdef const unsigned char[:] raw = response
        fill_key_from_address(&key, address)
        cdef Peer* peer = self.lookup(&key)
        if peer == NULL:
            return False
        cdef Exchange* ex = self._live(peer, mid, now)
        if ex == NULL or raw.shape[0] == 0:
            return False
        return self.store_response(ex, &raw[0], raw.shape[0])

    def stats(self) -> dict:
        return {
            "peers": self.peer_count,
            "max-peers": self.max_peers,
            "peers-added": self.peers_added,
            "peers-evicted": self.peers_evicted,
            "peers-expired": self.peers_expired,
            "peers-moved": self.peers_moved,
            "exchanges": self.exchanges_remembered,
            "exchanges-overwritten": self.exchanges_overwritten,
            "duplicates": self.duplicates,
        }


def key_from_address(address) -> bytes:
    """The PeerKey bytes of a Python socket address (for tests and tools)."""
    cdef PeerKey key
    fill_key_from_address(&key, address)
    return (<char*>&key)[:sizeof(PeerKey)]


cdef int fill_key_from_address(PeerKey* key, object address) except -1:
    """Fill *key* from a Python socket address; IPv4 is stored IPv4-mapped."""
    host = address[0].partition("%")[0]
    if ":" in host:
        raw = inet_pton(AF_INET6, host)
    else:
        raw = b"\0" * 10 + b"\xff\xff" + inet_pton(AF_INET, host)
    memcpy(key.address, <const char*>raw, 16)
    key.port = address[1]
    key.scope_id = address[3] if len(address) > 3 else 0
    key.padding = 0
    return 0

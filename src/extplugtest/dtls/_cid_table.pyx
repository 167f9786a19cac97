"""The DTLS connections by read CID: one table for the connector and the C data path.

The data path (_datapath.pyx) finds the connection of every tls12_cid record by its CID. A dict
cost a bytes object, a SipHash and a probe touching three cold cache lines (index, entry, key
object) per record; here the CID sits in its 32-byte slot, hashed with a few multiplies, and
``CidTable.find`` reads (usually) one cache line. The connector (connector.py) uses the same
table through its dict-like Python API.
"""

from os import urandom

from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
)
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset


cdef inline void _pad(const uint8_t* key, Py_ssize_t length, uint8_t* padded) noexcept nogil:
    memset(padded, 0, MAX_KEY_LENGTH)
    memcpy(padded, key, length)


cdef inline uint64_t _hash(const uint8_t* padded, Py_ssize_t length,
                           uint64_t secret) noexcept nogil:
    # Multiply-xorshift over the key's 8-byte chunks, keyed with a random secret per table so
    # that which CIDs collide is not predictable, then MurmurHash3's finalizer so that every
    # key byte reaches the low bits the slot is taken from. Our CIDs are random; a peer only
    # chooses the keys it looks up, and those cannot lengthen a probe chain.
    cdef uint64_t h = secret ^ <uint64_t>length
    cdef uint64_t chunk
    cdef Py_ssize_t offset
    for offset in range(0, length, 8):
        memcpy(&chunk, padded + offset, 8)  # (host order: the hash need only agree with itself)
        h = (h ^ chunk) * 0x9E3779B97F4A7C15ULL
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline Py_ssize_t _home(const CidSlot* slot, uint64_t secret, Py_ssize_t mask) noexcept nogil:
    """Where the probe for the entry in *slot* starts."""
    return <Py_ssize_t>(_hash(slot.key, slot.length, secret) & <uint64_t>mask)


cdef bint _padded_key(object key, uint8_t* padded, Py_ssize_t* length) noexcept:
    """Whether *key* can be in a table (bytes of length 1..MAX_KEY_LENGTH); if so, *padded*
    and *length* are its slot form."""
    if not PyBytes_Check(key):
        return False
    length[0] = PyBytes_GET_SIZE(key)
    if length[0] < 1 or length[0] > MAX_KEY_LENGTH:
        return False
    _pad(<const uint8_t*>PyBytes_AS_STRING(key), length[0], padded)
    return True


cdef void _release(CidSlot* slots, Py_ssize_t capacity) noexcept:
    """Drop the value of every slot, then the slots."""
    cdef Py_ssize_t i
    for i in range(capacity):
        Py_XDECREF(slots[i].value)
    free(slots)


cdef class CidTable:
    """Read CID -> connection: ``bytes`` keys of length 1..16, dict-like for Python, ``find``
    for C.

    Open addressing with linear probing in a power-of-two array of slots, at most half full:
    it doubles when it would be fuller, halves when it is less than an eighth full (never
    below 64 slots), and a removal shifts the entries behind it back (no tombstones). The
    table sets no bound of its own: every entry is a connection the connector holds, and the
    connector holds at most ``DtlsLimits.max_connections`` of them. The cycle collector does
    not look inside (connections do not refer back to the table).
    """

    def __cinit__(self):
        self.slots = <CidSlot*>calloc(MIN_CAPACITY, sizeof(CidSlot))
        if self.slots == NULL:
            raise MemoryError()
        self.mask = MIN_CAPACITY - 1
        self.secret = int.from_bytes(urandom(8), "little")

    def __dealloc__(self):
        if self.slots != NULL:
            _release(self.slots, self.mask + 1)

    # -- C level ----------------------------------------------------------------------------
    cdef PyObject* find(self, const uint8_t* key, Py_ssize_t length) noexcept:
        """The value of the *length* bytes at *key* (a borrowed reference), or NULL."""
        cdef uint8_t padded[MAX_KEY_LENGTH]
        if length < 1 or length > MAX_KEY_LENGTH:
            return NULL
        _pad(key, length, padded)
        return self.slots[self._probe(padded, length)].value

    cdef Py_ssize_t _probe(self, const uint8_t* padded, Py_ssize_t length) noexcept:
        """The slot holding the key, else the free slot where it would go (there is one: the
        table is at most half full)."""
        cdef Py_ssize_t index = <Py_ssize_t>(_hash(padded, length, self.secret)
                                             & <uint64_t>self.mask)
        cdef CidSlot* slot
        while True:
            slot = &self.slots[index]
            if slot.value == NULL or (slot.length == length
                                      and memcmp(slot.key, padded, MAX_KEY_LENGTH) == 0):
                return index
            index = (index + 1) & self.mask

    cdef PyObject* _lookup(self, object key) noexcept:
        """The value of a Python *key* (borrowed), or NULL: also for a key that cannot be in
        the table (find refuses the lengths)."""
        if not PyBytes_Check(key):
            return NULL
        return self.find(<const uint8_t*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    cdef PyObject* _remove(self, object key) noexcept:
        """Take *key* out and hand its value's reference to the caller; NULL: not there."""
        cdef uint8_t padded[MAX_KEY_LENGTH]
        cdef Py_ssize_t length, hole, index, home, capacity
        cdef PyObject* value
        if not _padded_key(key, padded, &length):
            return NULL
        hole = self._probe(padded, length)
        value = self.slots[hole].value
        if value == NULL:
            return NULL
        # Backward shift: an entry of the run behind the hole moves into it when its probe
        # passes the hole (starts at or before it), so every entry stays reachable from its home.
        index = hole
        while True:
            index = (index + 1) & self.mask
            if self.slots[index].value == NULL:
                break
            home = _home(&self.slots[index], self.secret, self.mask)
            if ((index - home) & self.mask) >= ((index - hole) & self.mask):
                self.slots[hole] = self.slots[index]
                hole = index
        self.slots[hole].value = NULL
        self.count -= 1
        capacity = self.mask + 1
        if capacity > MIN_CAPACITY and self.count * 8 < capacity:
            self._resize(capacity // 2)     # (out of memory: it just stays larger)
        return value

    cdef bint _resize(self, Py_ssize_t capacity) noexcept:
        """Rehash into *capacity* slots; False (the table unchanged) when out of memory."""
        cdef CidSlot* fresh = <CidSlot*>calloc(capacity, sizeof(CidSlot))
        cdef Py_ssize_t mask = capacity - 1
        cdef Py_ssize_t i, index
        if fresh == NULL:
            return False
        for i in range(self.mask + 1):
            if self.slots[i].value != NULL:
                index = _home(&self.slots[i], self.secret, mask)
                while fresh[index].value != NULL:
                    index = (index + 1) & mask
                fresh[index] = self.slots[i]
        free(self.slots)
        self.slots = fresh
        self.mask = mask
        return True

    # -- Python level -----------------------------------------------------------------------
    def __getitem__(self, key):
        cdef PyObject* value = self._lookup(key)
        if value == NULL:
            raise KeyError(key)
        return <object>value

    def get(self, key, default=None):
        cdef PyObject* value = self._lookup(key)
        return default if value == NULL else <object>value

    def __contains__(self, key) -> bool:
        return self._lookup(key) != NULL

    def __setitem__(self, key, value):
        cdef uint8_t padded[MAX_KEY_LENGTH]
        cdef Py_ssize_t length, index
        cdef CidSlot* slot
        cdef PyObject* old
        if not _padded_key(key, padded, &length):
            raise ValueError(f"CidTable keys are bytes of length 1..{MAX_KEY_LENGTH}")
        index = self._probe(padded, length)
        old = self.slots[index].value
        if old == NULL and (self.count + 1) * 2 > self.mask + 1:
            if not self._resize((self.mask + 1) * 2):
                raise MemoryError()
            index = self._probe(padded, length)
        slot = &self.slots[index]
        Py_INCREF(value)
        slot.value = <PyObject*>value
        if old == NULL:
            slot.length = <uint8_t>length
            memcpy(slot.key, padded, MAX_KEY_LENGTH)
            self.count += 1
        else:
            Py_XDECREF(old)     # last: the old value's finalizer may use the table

    def __delitem__(self, key):
        cdef PyObject* value = self._remove(key)
        if value == NULL:
            raise KeyError(key)
        Py_XDECREF(value)

    def pop(self, key, *default):
        """Take *key* out and return its value; when it is not there, *default* if given,
        else KeyError (like dict.pop)."""
        cdef PyObject* value
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        value = self._remove(key)
        if value == NULL:
            if default:
                return default[0]
            raise KeyError(key)
        result = <object>value
        Py_XDECREF(value)       # the table's reference (result holds its own)
        return result

    def __len__(self):
        return self.count

    def __iter__(self):
        return iter(self.keys())

    def keys(self) -> list:
        return [key for key, _value in self.items()]

    def values(self) -> list:
        return [value for _key, value in self.items()]

    def items(self) -> list:
        # Reads self.slots afresh at every step: an allocation here may run the garbage
        # collector, and a finalizer may change the table.
        cdef Py_ssize_t i = 0
        items = []
        while i <= self.mask:
            if self.slots[i].value != NULL:
                value = <object>self.slots[i].value
                key = PyBytes_FromStringAndSize(<const char*>self.slots[i].key,
                                                self.slots[i].length)
                items.append((key, value))
            i += 1
        return items

    def clear(self):
        cdef CidSlot* fresh = <CidSlot*>calloc(MIN_CAPACITY, sizeof(CidSlot))
        cdef CidSlot* old = self.slots
        cdef Py_ssize_t old_capacity = self.mask + 1
        if fresh == NULL:
            raise MemoryError()
        self.slots = fresh
        self.mask = MIN_CAPACITY - 1
        self.count = 0
        _release(old, old_capacity)     # last: a finalizer of a value may use the table

    def __repr__(self):
        return f"<CidTable: {self.count} entries in {self.mask + 1} slots>"

    @property
    def capacity(self) -> int:
        """Slots: a power of two, at least 64, at least twice the entries."""
        return self.mask + 1

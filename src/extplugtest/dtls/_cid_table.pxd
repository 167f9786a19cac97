# The DTLS connector's connections by read CID, C level: an open-addressing hash table with the
# CID bytes inline in its slots, so that the data path finds a record's connection with one
# probe into one array (see _cid_table.pyx).

cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint64_t

cdef enum:
    MAX_KEY_LENGTH = 16             # DTLS.CONNECTION_ID_LENGTH is 0..16 (server/config.py)
    MIN_CAPACITY = 64               # slots; a power of two

cdef struct CidSlot:                # 32 bytes
    PyObject* value                 # a strong reference; NULL: the slot is free
    uint8_t length
    uint8_t key[MAX_KEY_LENGTH]     # zero-padded behind length


@cython.final                       # (its cdef methods are called directly)
cdef class CidTable:
    cdef CidSlot* slots
    cdef Py_ssize_t mask            # the number of slots - 1
    cdef Py_ssize_t count
    cdef uint64_t secret            # hash key

    cdef PyObject* find(self, const uint8_t* key, Py_ssize_t length) noexcept
    cdef Py_ssize_t _probe(self, const uint8_t* padded, Py_ssize_t length) noexcept
    cdef PyObject* _lookup(self, object key) noexcept
    cdef bint _resize(self, Py_ssize_t capacity) noexcept
    cdef PyObject* _remove(self, object key) noexcept

# Socket addresses and batched UDP I/O (csrc/udp_batch.h), shared by the C-level modules.

from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef extern from "udp_batch.h" nogil:
    cdef struct sockaddr_storage:
        unsigned short ss_family
    ctypedef struct udp_batch:
        int capacity
        int slot_size
        int count
    int udp_batch_init(udp_batch* b, int capacity, int slot_size)
    void udp_batch_free(udp_batch* b)
    uint8_t* udp_batch_buffer(udp_batch* b, int i)
    int udp_batch_recv(int fd, udp_batch* b)
    bint udp_batch_truncated(udp_batch* b, int i)
    unsigned int udp_batch_length(udp_batch* b, int i)
    sockaddr_storage* udp_batch_addr(udp_batch* b, int i)
    unsigned int udp_batch_addrlen(udp_batch* b, int i)
    size_t udp_batch_queued_length(udp_batch* b, int i)
    void udp_batch_queue(udp_batch* b, size_t length, const sockaddr_storage* addr,
                         unsigned int addrlen)
    void udp_batch_set(udp_batch* b, int i, const uint8_t* data, size_t length,
                       const sockaddr_storage* addr, unsigned int addrlen)
    void udp_batch_set_length(udp_batch* b, int i, size_t length)
    void udp_batch_set_queued_length(udp_batch* b, int i, size_t length)
    int udp_batch_send(int fd, udp_batch* b)
    double monotonic_now()
    ssize_t udp_send_one(int fd, const void* data, size_t length, const sockaddr_storage* addr,
                         unsigned int addrlen)

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct in6_addr:
        uint8_t s6_addr[16]
    cdef struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t ntohs(uint16_t)
    uint16_t htons(uint16_t)
    int AF_INET
    int AF_INET6

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)
    int inet_pton(int af, const char* src, void* dst)

cdef object address_tuple(const sockaddr_storage* addr)
cdef unsigned int fill_sockaddr(sockaddr_storage* out, object address) except 0


cdef inline bint get_bytes(object obj, Py_buffer* view) except -1:
    """Fill view.buf/len from *obj*; True if a buffer was acquired (release it with
    PyBuffer_Release). bytes, the common case, skips the buffer protocol."""
    if type(obj) is bytes:
        view.buf = PyBytes_AS_STRING(obj)
        view.len = PyBytes_GET_SIZE(obj)
        return False
    PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    return True

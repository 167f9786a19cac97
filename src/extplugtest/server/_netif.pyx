"""The local interface addresses, from getifaddrs(3)."""

from libc.stdint cimport uint32_t

cdef extern from "<ifaddrs.h>" nogil:
    struct sockaddr:
        unsigned short sa_family
    struct ifaddrs:
        ifaddrs* ifa_next
        char* ifa_name
        unsigned int ifa_flags
        sockaddr* ifa_addr
    int getifaddrs(ifaddrs** ifap)
    void freeifaddrs(ifaddrs* ifa)

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in:
        in_addr sin_addr
    struct sockaddr_in6:
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    int AF_INET
    int AF_INET6

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)

cdef extern from "<net/if.h>" nogil:
    unsigned int IFF_UP


def interface_addresses() -> list:
    """(interface name, family, address text, scope id) of every address of an up interface."""
    cdef ifaddrs* first
    cdef ifaddrs* entry
    cdef char text[64]
    cdef int family
    result = []
    if getifaddrs(&first) != 0:
        raise OSError("getifaddrs failed")
    try:
        entry = first
        while entry != NULL:
            if entry.ifa_addr != NULL and entry.ifa_flags & IFF_UP:
                family = entry.ifa_addr.sa_family
                if family == AF_INET:
                    inet_ntop(AF_INET, &(<sockaddr_in*>entry.ifa_addr).sin_addr, text, 64)
                    result.append((entry.ifa_name.decode(), 4, text.decode(), 0))
                elif family == AF_INET6:
                    inet_ntop(AF_INET6, &(<sockaddr_in6*>entry.ifa_addr).sin6_addr, text, 64)
                    result.append((entry.ifa_name.decode(), 6, text.decode(),
                                   (<sockaddr_in6*>entry.ifa_addr).sin6_scope_id))
            entry = entry.ifa_next
    finally:
        freeifaddrs(first)
    return result

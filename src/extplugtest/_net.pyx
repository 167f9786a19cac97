"""Python socket addresses <-> sockaddr, shared by the UDP engine and the NAT forwarder."""

from libc.string cimport memset


cdef object address_tuple(const sockaddr_storage* addr):
    """(host, port) for IPv4, (host, port, 0, scope id) for IPv6, as the socket module has it."""
    cdef char text[64]
    cdef const sockaddr_in* v4
    cdef const sockaddr_in6* v6
    if addr.ss_family == AF_INET:
        v4 = <const sockaddr_in*>addr
        inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(v4.sin_port))
    v6 = <const sockaddr_in6*>addr
    inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text))
    return (text.decode("ascii"), ntohs(v6.sin6_port), 0, v6.sin6_scope_id)


cdef unsigned int fill_sockaddr(sockaddr_storage* out, object address) except 0:
    """A sockaddr from a Python address tuple (the family follows from the host text);
    returns its length."""
    cdef sockaddr_in* v4
    cdef sockaddr_in6* v6
    host = str(address[0]).split("%")[0].encode("ascii")
    memset(out, 0, sizeof(sockaddr_storage))
    if b":" not in host:
        v4 = <sockaddr_in*>out
        v4.sin_family = AF_INET
        v4.sin_port = htons(address[1])
        if inet_pton(AF_INET, host, &v4.sin_addr) != 1:
            raise ValueError(f"not an IPv4 address: {address[0]!r}")
        return sizeof(sockaddr_in)
    v6 = <sockaddr_in6*>out
    v6.sin6_family = AF_INET6
    v6.sin6_port = htons(address[1])
    if len(address) > 3:
        v6.sin6_scope_id = address[3]
    if inet_pton(AF_INET6, host, &v6.sin6_addr) != 1:
        raise ValueError(f"not an IPv6 address: {address[0]!r}")
    return sizeof(sockaddr_in6)

# cython: freethreading_compatible = False
"""Closed-loop CoAP load generator: the hot path of ``extclient benchmark``.

N emulated clients, each with its own connected, non-blocking UDP socket (so its own source
port) and up to ``nstart`` requests outstanding: a client's next request is sent from the
receive path as soon as a response arrives (or after ``interval``). One epoll loop does all
sending, receiving, matching, retransmission, block-wise transfer and latency accounting in C
without the GIL, so it runs in a worker thread while the Python main thread prints progress
(see benchmark.py).

Retransmission follows RFC 7252 §4.2 with Californium's defaults: the first timeout is random
in [ACK_TIMEOUT, ACK_TIMEOUT * 1.5], it doubles with every retransmission, and once
MAX_RETRANSMIT retransmissions have timed out the exchange fails (a "transmission error").
After an empty ACK, and for NON requests, the client waits up to the response timeout.

What happens after a failure follows Californium's BenchmarkClient: a failed CON request stops
its client, unless ``no_stop``; then, and for NON requests, the request is given back and
retried after ``retry_delay`` (+ jitter). A 5.03 is retried after max(1 s, Max-Age); other
error responses stop the client, or with ``no_stop`` count as transmission errors and the
client goes on after ``retry_delay``. Over coaps with ``dtls_recovery`` a failed CON request
parks its client after ``retry_delay`` for a new full handshake (done in Python, as for
``handshakes_every``; Californium forces one then). Every failed request is queued for
Python's per-client lines (``take_errors``).

Block-wise (RFC 7959): with ``block_size`` every request asks for Block2 of that size (early
negotiation) and a payload larger than one block is sent as Block1 blocks; a response with
Block2 "more" is always followed up to its last block. Only the whole transfer counts as one
request; its latency runs from the first block to the last response.

Observe mode: the request carries Observe=0; a 2.xx with Observe starts counting notifications
on that token. Every ``reregister`` notifications the client re-registers with the same token,
every ``register`` notifications it forgets the token (the next notification gets an RST,
a "reactive cancel") and registers anew.

Reverse mode (``serve_feeds``): the clients also serve Californium's ``Feed`` resources
``feed-CON`` and ``feed-NON`` for the server's requests (its /reverse-request and
/reverse-observe): a GET is answered with "hello <client> feed-<n>" (cut or padded to
``?rlen``, 0..8192; n counts the representations of all clients, as Feed.java's static
``started``), a GET with Observe=0 starts notifications every ``feed_min``..``feed_max`` ms (CON
for feed-CON, retransmitted until acknowledged; a non-positive interval: that long after the
previous one completed). An RST for a notification ends the observation. As Californium's
BlockwiseLayer, an answer larger than the block size (``block_size``, else 1024), or one asked
for in blocks, goes as Block2 block 0 (with Size2); the further blocks come from the same
representation (rebuilt from its counter, nothing is stored) until the last one is fetched.
``?ack`` (without Observe) gets an empty ACK and then the answer as CON. An Accept other than
text/plain gets 4.06, a query other than rlen/ack or a bad rlen 4.02 with the texts of
Californium's UriQueryParameter; all of it in C, without Python objects.

coap+tcp (RFC 8323, ``transport="tcp"``): each client owns a connected TCP socket instead.
Before its first request it sends a CSM (7.01, Max-Message-Size); requests are frames (§3.2:
no type, no MID), matched by token; there is no retransmission, only the response timeout
(Californium: a timeout is a failure like a CON's). Every read goes after the client's kept
incomplete frame, all complete frames in it are handled, the rest is kept (bounded by the
Max-Message-Size we announce); what the socket does not take waits in a bounded send buffer
(EPOLLOUT). The server's signalling: its CSM is noted, a Ping (7.02) is answered with a Pong
(7.03) with the same token, a Release (7.04) ends new requests on the connection, an Abort
(7.05) closes it. A closed connection (FIN, error, Abort, or a malformed or oversized frame
from the server, which gets an Abort) counts each outstanding request as a transmission
error and stops its client for good (there is no reconnect, with or without ``no_stop``).
Reverse mode is UDP only; observe works, but re-registering with a new token (``register``)
is UDP only (without RST the old relation could not be cancelled reactively).

coaps+tcp (RFC 8323 §4.1): the same over TLS, with OpenSSL's libssl: ``use_tls()`` gives every
client an SSL on its connection (one SSL_CTX: TLS 1.2 or later, ALPN "coap", the server's
certificate verified against a CA file and the host), ``handshake_tls()`` drives all handshakes
at once without the GIL (SSL_connect on epoll readiness, bounded by a deadline), and the loop
reads with SSL_read (until it wants to read, as SSL may hold a record the socket delivered)
and writes with SSL_write (what it does not take waits in the send buffer, as over TCP).

Source addresses (``source_first``, coap and coaps over IPv4): all clients share one socket
and client i sends from address source_first + i (IP_PKTINFO, csrc/source_batch.h). What the
clients send in one round of the loop leaves with one sendmmsg (before the loop waits), and
what arrives is read with recvmmsg and handed to the client whose address it was sent to; only
datagrams from the server count, as with a connected socket. Per request that saves the
send, the recv and the epoll event of a socket per client: the kernel's UDP path is most of
the generator's cost (bench/README.md).

The sockets belong to the caller; the generator only reads, writes and polls them (a closed
TCP connection leaves the poll set, its socket stays open until the caller closes it).
"""

from libc.errno cimport errno, EAGAIN, ECONNRESET, EINTR, ENOBUFS, ENOMEM, EPIPE, EPROTO
from libc.math cimport ceil
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.stdlib cimport calloc, free, malloc
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID
from posix.unistd cimport close

from extplugtest._poll cimport POLLIN, poll, pollfd
from extplugtest.dtls._record cimport (
    APPLICATION_DATA, EXPLICIT_NONCE_LENGTH, RECORD_OK, AeadCipher, Plaintext, RecordView,
    parse_record_view,
)
from extplugtest.coap._codec cimport (
    parse_view, MessageView, OptionView, option_uint, Writer, writer_init, write_header,
    write_option, write_uint_option, write_payload, writer_length, PARSE_OK, CON, NON, ACK, RST,
)
from extplugtest.coap._tcp_codec cimport (
    FrameHeader, frame_from_datagram, frame_header, parse_frame, BASE_MAX_MESSAGE_SIZE,
    TCP_MAX_HEADER, SIGNAL_CSM, SIGNAL_PING, SIGNAL_PONG, SIGNAL_RELEASE, SIGNAL_ABORT,
)

import ipaddress
import os
import threading

from extplugtest._openssl_init cimport extplugtest_openssl_init

extplugtest_openssl_init()  # before any other libcrypto call (csrc/openssl_init.h)
if lg_ssl_init() != 1:
    raise ImportError("OPENSSL_init_ssl failed")

cdef extern from "<arpa/inet.h>" nogil:
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)
    uint16_t htons(uint16_t)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void* buffer, size_t length, int flags)
    ssize_t send(int fd, const void* buffer, size_t length, int flags)
    enum: MSG_NOSIGNAL
    enum: AF_INET

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum: EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL
    enum: EPOLL_CLOEXEC

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct X509_VERIFY_PARAM:
        pass
    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    int SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)
    int SSL_CTX_set_alpn_protos(SSL_CTX* ctx, const unsigned char* protos, unsigned int length)
    int SSL_CTX_load_verify_locations(SSL_CTX* ctx, const char* cafile, const char* capath)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* callback)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX* ctx, const char* file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX* ctx, const char* file, int kind)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    int SSL_set_fd(SSL* ssl, int fd)
    void SSL_set_connect_state(SSL* ssl)
    long SSL_set_mode(SSL* ssl, long mode)
    int SSL_set_tlsext_host_name(SSL* ssl, const char* name)
    int SSL_set1_host(SSL* ssl, const char* hostname)
    X509_VERIFY_PARAM* SSL_get0_param(SSL* ssl)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM* param, const char* ip)
    int SSL_connect(SSL* ssl)
    int SSL_read(SSL* ssl, void* buffer, int length)
    int SSL_write(SSL* ssl, const void* buffer, int length)
    int SSL_pending(const SSL* ssl)
    int SSL_shutdown(SSL* ssl)
    int SSL_get_error(const SSL* ssl, int ret)
    long SSL_get_verify_result(const SSL* ssl)
    void SSL_get0_alpn_selected(const SSL* ssl, const unsigned char** data, unsigned int* length)
    const char* X509_verify_cert_error_string(long n)
    enum: TLS1_2_VERSION, SSL_FILETYPE_PEM, SSL_VERIFY_NONE, SSL_VERIFY_PEER, X509_V_OK
    enum: SSL_MODE_ENABLE_PARTIAL_WRITE, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
    enum: SSL_ERROR_NONE, SSL_ERROR_SSL, SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE
    enum: SSL_ERROR_SYSCALL, SSL_ERROR_ZERO_RETURN

cdef extern from "<openssl/err.h>" nogil:
    void ERR_clear_error()
    unsigned long ERR_get_error()
    void ERR_error_string_n(unsigned long code, char* buffer, size_t length)

cdef extern from * nogil:
    """
    #include <openssl/ssl.h>
    /* libssl's own initialisation: without the host's openssl.cnf in a static wheel build, as
       csrc/openssl_init.h does for libcrypto. */
    static int lg_ssl_init(void) {
    #ifdef EXTPLUGTEST_STATIC_OPENSSL
        return OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    #else
        return OPENSSL_init_ssl(0, NULL);
    #endif
    }
    /* A server that closes without close_notify ends the connection like a FIN. */
    static void lg_ctx_options(SSL_CTX *ctx) {
    #ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    #endif
    }
    """
    int lg_ssl_init()
    void lg_ctx_options(SSL_CTX* ctx)

cdef extern from * nogil:
    """
    /* The stop flag is written by the Python thread and read by the loop thread. */
    static inline int lg_load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void lg_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int lg_msb(unsigned long long v) { return 63 - __builtin_clzll(v); }
    """
    int lg_load(int* p)
    void lg_store(int* p, int value)
    int lg_msb(unsigned long long value)

cdef enum:
    MAX_EVENTS = 512
    RECORD_ROOM = 13 + 255 + 8 + 1 + 16  # a DTLS record around a message: header, CID, ...
    DATAGRAM_SIZE = 2048        # Californium's UDP.DATAGRAM_SIZE; larger datagrams are cut
    SCAN_INTERVAL_MS = 10       # timer resolution: how often deadlines are checked
    BLOCKS_WAIT_MS = 5000       # Californium's Feed waits for the last block at most 5 s
    HALF = 1 << (SUB_BITS - 1)
    OPTION_ETAG = 4
    OPTION_OBSERVE = 6
    OPTION_URI_PATH = 11
    OPTION_CONTENT_FORMAT = 12
    OPTION_MAX_AGE = 14
    OPTION_URI_QUERY = 15
    OPTION_BLOCK2 = 23
    OPTION_BLOCK1 = 27
    CODE_CONTENT = 0x45         # 2.05
    CODE_CONTINUE = 0x5F        # 2.31
    CODE_NOT_FOUND = 0x84       # 4.04
    CODE_METHOD_NOT_ALLOWED = 0x85  # 4.05
    CODE_SERVICE_UNAVAILABLE = 0xA3  # 5.03
    DEFAULT_MAX_AGE = 60        # s, when a 5.03 has no Max-Age (RFC 7252 §5.10.5)
    MIN_FEED_INTERVAL_MS = 20   # Californium's Feed: notifications at least 20 ms apart
    MAX_RESOURCE_BODY_SIZE = 8192  # Californium's: the largest ?rlen of a feed (else 4.02)
    FEED_TEXT_SIZE = 48         # "hello <int> feed-<uint64>" and its NUL
    QUERY_TEXT_SIZE = 512       # a 4.02's text (a long query is cut)
    OPTION_ACCEPT = 17
    OPTION_SIZE2 = 28
    CODE_BAD_OPTION = 0x82      # 4.02
    CODE_NOT_ACCEPTABLE = 0x86  # 4.06
    # coap+tcp
    TCP_MAX_MESSAGE_SIZE = 9216  # announced in our CSM: the largest frame we take
    RX_CAPACITY = TCP_MAX_MESSAGE_SIZE + TCP_MAX_HEADER  # a kept incomplete frame
    READ_SIZE = 65536           # bytes asked for per recv
    TLS_READS = 16              # coaps+tcp: SSL_reads per readiness before others get a turn
    TX_CAPACITY = 131072        # unsent bytes per connection; more: the connection is given up
    FRAME_ROOM = 8              # a frame is at most this much longer than its datagram
    # --source-addresses
    SOURCE_TX_BATCH = 256       # datagrams per sendmmsg (flushed before the loop waits)
    SOURCE_RX_BATCH = 128       # datagrams per recvmmsg
    SOURCE_RX_ROUNDS = 8        # recvmmsg calls per readiness before timers get a turn
    CODE_NOT_IMPLEMENTED = 0xA1  # 5.01, for a request of the server

ACK_TIMEOUT_MS = 2000
MAX_RETRANSMIT = 4
MAX_CLIENTS = 20000
MAX_NSTART = 32
MAX_EXCHANGES = 80000           # clients x nstart: the timer scan walks all of them every 10 ms
MAX_PAYLOAD = 65536
RETRY_DELAY_MS = 1000
JITTER_MS = 500
# -- helpers ---------------------------------------------------------------------------------

cdef inline uint64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline uint64_t cpu_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline uint64_t next_random(Engine* e) noexcept nogil:
    # xorshift64*: good enough for timeout jitter and start values, and lock-free.
    cdef uint64_t x = e.rng
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    e.rng = x
    return x * <uint64_t>2685821657736338717


# -- latency histogram -----------------------------------------------------------------------

cdef inline int bucket_of(uint64_t us) noexcept nogil:
    cdef int shift
    if us < (1 << SUB_BITS):
        return <int>us
    if us >= (<uint64_t>1 << MAX_VALUE_BITS):
        us = (<uint64_t>1 << MAX_VALUE_BITS) - 1
    shift = lg_msb(us) - (SUB_BITS - 1)
    return shift * HALF + <int>(us >> shift)


cdef inline uint64_t bucket_upper(int index) noexcept nogil:
    """The largest value that falls into bucket *index*."""
    cdef int shift, mantissa
    if index < (1 << SUB_BITS):
        return <uint64_t>index
    shift = index // HALF - 1
    mantissa = index - shift * HALF
    return ((<uint64_t>mantissa + 1) << shift) - 1


cdef inline void record(Histogram* h, uint64_t us) noexcept nogil:
    h.count += 1
    h.sum_us += us
    if us > h.max_us:
        h.max_us = us
    h.buckets[bucket_of(us)] += 1


cdef uint64_t percentile(const Histogram* h, double q) noexcept nogil:
    """Upper limit of the bucket holding the q-quantile, capped at the maximum (as Californium)."""
    cdef uint64_t rank, seen = 0, upper
    cdef int i
    if h.count == 0:
        return 0
    rank = <uint64_t>ceil(q * <double>h.count)
    if rank < 1:
        rank = 1
    for i in range(BUCKETS):
        seen += h.buckets[i]
        if seen >= rank:
            upper = bucket_upper(i)
            return upper if upper < h.max_us else h.max_us
    return h.max_us


# -- protocol --------------------------------------------------------------------------------

cdef inline void socket_error(Engine* e, Client* c, int err) noexcept nogil:
    e.total.socket_errors += 1
    c.last_error = err
    if e.stop_on_error:
        lg_store(&e.stop, 1)


cdef inline uint64_t pause_ns(Engine* e, uint64_t delay_ns) noexcept nogil:
    """A pause before a client's next request: Californium adds 0..499 ms to any pause."""
    if delay_ns == 0:
        return 0
    return delay_ns + (next_random(e) % e.jitter_ns if e.jitter_ns else 0)


cdef inline void patch(uint8_t* m, const Exchange* x) noexcept nogil:
    m[2] = x.mid >> 8
    m[3] = x.mid & 0xFF
    m[4] = x.token >> 24
    m[5] = (x.token >> 16) & 0xFF
    m[6] = (x.token >> 8) & 0xFF
    m[7] = x.token & 0xFF


cdef inline void patch_token(uint8_t* t, uint32_t token) noexcept nogil:
    t[0] = token >> 24
    t[1] = (token >> 16) & 0xFF
    t[2] = (token >> 8) & 0xFF
    t[3] = token & 0xFF


cdef inline uint32_t block_bytes(int szx) noexcept nogil:
    return <uint32_t>1 << (szx + 4)


cdef void transmit(Engine* e, Client* c, Exchange* x) noexcept nogil:
    """Send (or resend) the exchange's current message: built from its state, so that a
    retransmission repeats it byte for byte."""
    cdef uint8_t buffer[DATAGRAM_SIZE]
    cdef uint8_t* message
    cdef Py_ssize_t length
    cdef Writer w
    cdef uint32_t size, left
    cdef bint more
    if not x.blockwise:
        if e.transport == TRANSPORT_TCP:
            patch_token(e.tcp_request + e.tcp_token_offset, x.token)
            tcp_send(e, c, e.tcp_request, e.tcp_request_length)
            return
        # The common case: the template is private to this loop, patch it in place.
        message = e.request
        length = e.request_length
    else:
        message = buffer
        memcpy(buffer, e.base, e.base_length)
        w.start = buffer
        w.pos = buffer + e.base_length
        w.end = buffer + DATAGRAM_SIZE
        w.last_option = e.base_last_option
        w.overflow = False
        if x.block2_num > 0 or e.early_block2_szx >= 0:
            write_uint_option(&w, OPTION_BLOCK2, (x.block2_num << 4) | x.block2_szx)
        if x.block2_num == 0 and e.payload_length > 0:
            if e.payload_blockwise:
                size = block_bytes(x.block1_szx)
                left = <uint32_t>e.payload_length - x.block1_offset
                more = left > size
                write_uint_option(&w, OPTION_BLOCK1, ((x.block1_offset // size) << 4)
                                  | (<uint32_t>more << 3) | x.block1_szx)
                write_payload(&w, e.payload + x.block1_offset, size if more else left)
            else:
                write_payload(&w, e.payload, e.payload_length)
        length = writer_length(&w)
    patch(message, x)
    if e.transport == TRANSPORT_TCP:
        tcp_send_datagram(e, c, message, length)
    else:
        client_send(e, c, message, length)


cdef void client_send(Engine* e, Client* c, const uint8_t* message,
                      Py_ssize_t length) noexcept nogil:
    """Send one CoAP message of the client: as it is (coap), or in one DTLS application
    record of its session (coaps). With source addresses the datagram is built in the next
    slot of the shared socket's batch (sealed there, or copied: the template is patched again
    for the next request) and leaves with the batch."""
    cdef uint8_t record[DATAGRAM_SIZE + RECORD_ROOM]
    cdef uint8_t* out = record
    cdef Py_ssize_t sealed
    if e.source_fd >= 0:
        out = source_batch_buffer(&e.source_tx, e.source_tx.count)
    if c.cipher != NULL:
        sealed = (<AeadCipher>c.cipher).seal_into(
            (<AeadCipher>c.cipher).epoch, c.write_seq, APPLICATION_DATA, message, length,
            (<AeadCipher>c.cipher).write_cid_data, (<AeadCipher>c.cipher).write_cid_length,
            out, DATAGRAM_SIZE + RECORD_ROOM)
        if sealed < 0:
            e.total.dtls_dropped += 1
            return
        c.write_seq += 1
        message = out
        length = sealed
    elif e.source_fd >= 0:
        memcpy(out, message, length)
    if e.source_fd >= 0:
        queue_from_source(e, c, length)
        return
    if send(c.fd, message, length, MSG_NOSIGNAL) < 0:
        # Lost like a dropped datagram: a CON is retransmitted, a NON times out.
        socket_error(e, c, errno)


cdef void queue_from_source(Engine* e, Client* c, Py_ssize_t length) noexcept nogil:
    """--source-addresses: queue the client's datagram (in the next slot already), from its
    own address, for the next sendmmsg of the shared socket (before the loop waits, or when
    the batch is full)."""
    cdef int index = <int>(c - e.clients)
    source_batch_queue(&e.source_tx, length, &e.server, htonl(e.source_first + <uint32_t>index))
    if e.source_tx.count == e.source_tx.capacity:
        flush_sources(e)


cdef void flush_sources(Engine* e) noexcept nogil:
    """Send what the clients queued; a refused datagram is lost like a dropped one (a CON is
    retransmitted) and counted as a socket error of its client."""
    cdef int slots[SOURCE_TX_BATCH]
    cdef int errors[SOURCE_TX_BATCH]
    cdef int i, failed
    cdef uint32_t client
    if e.source_tx.count == 0:
        return
    failed = source_batch_send(e.source_fd, &e.source_tx, slots, errors)
    for i in range(failed):     # the slots keep their source address until the next queue
        client = ntohl(source_batch_queued_source(&e.source_tx, slots[i])) - e.source_first
        socket_error(e, &e.clients[client], errors[i])


cdef int read_sources(Engine* e) noexcept nogil:
    """--source-addresses: the datagrams waiting on the shared socket (how many), each to the
    client whose address it was sent to. As a connected socket would, only datagrams from the
    server are taken; the rest, and those to no client's address, are counted as ignored."""
    cdef const sockaddr_in* peer
    cdef Client* c
    cdef uint32_t index
    cdef uint64_t now
    cdef int i, n, _round, taken = 0
    for _round in range(SOURCE_RX_ROUNDS):
        n = source_batch_recv(e.source_fd, &e.source_rx)
        if n < 0:
            e.total.socket_errors += 1
            return taken
        taken += n
        now = monotonic_ns()        # one arrival time for the datagrams of one recvmmsg
        for i in range(n):
            peer = source_batch_peer(&e.source_rx, i)
            index = ntohl(source_batch_local(&e.source_rx, i)) - e.source_first
            if (peer.sin_addr.s_addr != e.server.sin_addr.s_addr
                    or peer.sin_port != e.server.sin_port
                    or index >= <uint32_t>e.client_count):
                e.total.ignored += 1
                continue
            c = &e.clients[index]
            if c.in_handshake:
                e.total.ignored += 1        # the old session's: Python owns the client now
                continue
            if c.cipher != NULL:
                on_records(e, c, now, source_batch_buffer(&e.source_rx, i),
                           source_batch_length(&e.source_rx, i))
            else:
                on_datagram(e, c, now, source_batch_buffer(&e.source_rx, i),
                            source_batch_length(&e.source_rx, i))
        if n < e.source_rx.capacity:
            break
    return taken


cdef int wait_sources(Engine* e, uint64_t wait_ns) noexcept nogil:
    """--source-addresses: send what is queued, take what arrived, and only if nothing did,
    wait (up to *wait_ns*) for the shared socket. poll, not epoll: a socket in an epoll set
    has a waiter all the time, and then every datagram it sends wakes that waiter when the
    kernel frees it (sock_wfree); with poll there is one only while the loop sleeps.
    -1 with errno on a failed poll."""
    cdef pollfd ready
    flush_sources(e)
    if read_sources(e) > 0:
        return 0
    ready.fd = e.source_fd
    ready.events = POLLIN
    ready.revents = 0
    if poll(&ready, 1, <int>((wait_ns + 999999) // 1000000)) < 0:
        return -1
    return 0


cdef void on_records(Engine* e, Client* c, uint64_t now, uint8_t* data,
                     ssize_t length) noexcept nogil:
    """A datagram of a coaps client: every application record it holds, opened in place, is
    a CoAP message; anything else (alerts, replays, forgeries) is dropped and counted."""
    cdef RecordView record
    cdef Plaintext plain
    cdef Py_ssize_t offset = 0
    cdef uint8_t* fragment
    cdef int opened
    while offset < length:
        if parse_record_view(data + offset, length - offset, c.read_cid_length,
                             &record) != RECORD_OK:
            e.total.dtls_dropped += 1
            return
        fragment = <uint8_t*>record.fragment + EXPLICIT_NONCE_LENGTH
        opened = (<AeadCipher>c.cipher).open_view(
            &record, fragment, length - offset - (fragment - (data + offset)), &plain)
        if opened == RECORD_OK and plain.content_type == APPLICATION_DATA:
            on_datagram(e, c, now, plain.data, plain.length)
        else:
            e.total.dtls_dropped += 1
        offset += record.record_length


cdef inline void send_empty(Engine* e, Client* c, int type, uint16_t mid) noexcept nogil:
    cdef uint8_t message[4]
    cdef Writer w
    writer_init(&w, message, 4)
    write_header(&w, type, 0, mid, NULL, 0)
    client_send(e, c, message, 4)


cdef inline bint take_request(Engine* e, Client* c) noexcept nogil:
    if e.unlimited:
        return True
    if e.shared:
        if e.shared_remaining == 0:
            return False
        e.shared_remaining -= 1
        return True
    if c.remaining <= 0:
        return False
    c.remaining -= 1
    return True


cdef inline void give_back(Engine* e, Client* c) noexcept nogil:
    """A failed request goes back to the budget, to be retried (Californium's down-counter)."""
    e.total.retried += 1
    if e.unlimited:
        return
    if e.shared:
        e.shared_remaining += 1
    else:
        c.remaining += 1


cdef inline void client_idle(Engine* e, Client* c) noexcept nogil:
    """The client has nothing left to do: it no longer counts as active (or pending)."""
    e.active -= 1
    if not c.started:
        e.pending -= 1


cdef inline void retire(Engine* e, Client* c, Exchange* x) noexcept nogil:
    x.state = IDLE
    x.deadline_ns = 0
    c.busy -= 1
    if c.busy == 0:
        client_idle(e, c)


cdef void stop_client(Engine* e, Client* c) noexcept nogil:
    """Californium without --no-stop: a failure ends the client, whatever it has outstanding."""
    cdef Exchange* x
    cdef int i
    cdef int first = <int>(c - e.clients) * e.nstart
    for i in range(first, first + e.nstart):
        x = &e.exchanges[i]
        x.state = IDLE
        x.deadline_ns = 0
    c.stopped = True
    e.total.stopped_clients += 1
    if c.busy > 0:
        c.busy = 0
        client_idle(e, c)


cdef void send_message(Engine* e, Client* c, Exchange* x, uint64_t now) noexcept nogil:
    """First transmission of a new message of the exchange (a request or its next block)."""
    c.mid = (c.mid + 1) & 0xFFFF
    x.mid = c.mid
    x.sent_ns = now
    x.retransmits = 0
    if e.confirmable:
        x.state = WAIT_ACK
        x.timeout_ns = e.ack_timeout_ns + next_random(e) % (e.ack_timeout_ns // 2 + 1)
        x.deadline_ns = now + x.timeout_ns
    else:
        x.state = WAIT_RESPONSE
        x.deadline_ns = now + e.response_timeout_ns
    e.total.transmissions += 1
    transmit(e, c, x)


cdef void register_request(Engine* e, Client* c, Exchange* x, uint64_t now,
                           bint new_token) noexcept nogil:
    if new_token:
        c.token += 1
        x.token = c.token
    x.started_ns = now
    x.block1_offset = 0
    x.block1_szx = e.block1_szx
    x.block2_num = 0
    x.block2_szx = e.early_block2_szx if e.early_block2_szx >= 0 else 6
    x.blockwise = e.early_block2_szx >= 0 or e.payload_blockwise
    e.total.sent += 1
    send_message(e, c, x, now)


cdef void start_request(Engine* e, Client* c, Exchange* x, uint64_t now) noexcept nogil:
    """Send the exchange's next request, or retire it when the budget is spent (or the
    coap+tcp server sent Release)."""
    if c.stopped:
        return      # coap+tcp: the connection ended while the client started its exchanges
    if c.force_handshake and not c.in_handshake and park_client(e, c):
        return      # coaps: a new session first
    if c.released or not take_request(e, c):
        retire(e, c, x)
        return
    register_request(e, c, x, now, True)


cdef inline void schedule(Engine* e, Client* c, Exchange* x, uint64_t now,
                          uint64_t delay_ns) noexcept nogil:
    delay_ns = pause_ns(e, delay_ns)
    if delay_ns == 0:
        start_request(e, c, x, now)
    else:
        x.state = WAIT_DELAY
        x.deadline_ns = now + delay_ns


cdef inline void record_latency(Engine* e, Client* c, Exchange* x, uint64_t now,
                                Histogram* h) noexcept nogil:
    cdef uint64_t rtt = now - x.started_ns
    if not c.started or c.reconnected:
        # Californium's "connects": the first response after a (re)connect, whose RTT
        # includes the DTLS handshake the request started (ours ran just before it)
        h = &e.connect_latency
        rtt += c.connect_ns
        c.connect_ns = 0
        c.reconnected = False
    record(h, rtt // 1000)
    if x.sent_ns != x.started_ns:
        record(&e.block_latency, (now - x.sent_ns) // 1000)


cdef inline bint ring_push(Ring* r, int value) noexcept nogil:
    cdef int tail = r.tail
    cdef int following = (tail + 1) % r.capacity
    if r.capacity == 0 or following == lg_load(&r.head):
        return False
    r.slots[tail] = value
    lg_store(&r.tail, following)
    return True


cdef inline int ring_pop(Ring* r) noexcept nogil:
    cdef int head = r.head
    cdef int value
    if r.capacity == 0 or head == lg_load(&r.tail):
        return -1
    value = r.slots[head]
    lg_store(&r.head, (head + 1) % r.capacity)
    return value


cdef bint park_client(Engine* e, Client* c) noexcept nogil:
    """coaps: take the client out of the loop (its socket leaves the epoll set; with source
    addresses its datagrams are ignored) and ask the Python side for a new DTLS handshake
    (``force_handshake``: after a failed request). Its requests wait for the new session:
    those sent on the old one go back to the budget and are sent again."""
    cdef int index = <int>(c - e.clients)
    cdef int i, first = index * e.nstart
    cdef Exchange* x
    if c.in_handshake or c.cipher == NULL:
        return False
    if not ring_push(&e.handshake_requests, index * 2 + (1 if c.force_handshake else 0)):
        return False
    if e.source_fd < 0:
        epoll_ctl(e.epfd, EPOLL_CTL_DEL, c.fd, NULL)
    c.in_handshake = True
    for i in range(first, first + e.nstart):
        x = &e.exchanges[i]
        if x.state == WAIT_ACK or x.state == WAIT_RESPONSE:
            give_back(e, c)
        elif x.state != WAIT_DELAY:
            continue
        x.state = WAIT_HANDSHAKE
        x.deadline_ns = 0
    return True


cdef bint park_for_handshake(Engine* e, Client* c, Exchange* x) noexcept nogil:
    """coaps, every handshake_every-th response: park the client for a new handshake before
    its next request."""
    if (e.handshake_every == 0 or c.cipher == NULL or e.nstart != 1
            or c.completed % e.handshake_every != 0):
        return False
    x.state = WAIT_DELAY        # its next request waits for the handshake
    x.deadline_ns = 0
    return park_client(e, c)


cdef void resume_handshaken(Engine* e, uint64_t now) noexcept nogil:
    """Clients back from their handshakes: into the epoll set, and their requests go on: at
    once after a failure (the handshake was the request's, as in Californium), else after
    the interval."""
    cdef epoll_event event
    cdef int index = ring_pop(&e.handshakes_done)
    cdef int i
    cdef bint recovery
    cdef Client* c
    cdef Exchange* x
    while index >= 0:                       # bounded: each client is queued at most once
        c = &e.clients[index]
        if e.source_fd < 0:
            event.events = EPOLLIN
            event.data.u64 = 0
            event.data.u32 = <uint32_t>index
            epoll_ctl(e.epfd, EPOLL_CTL_ADD, c.fd, &event)
        c.in_handshake = False
        c.reconnected = True
        recovery = c.force_handshake
        c.force_handshake = False
        for i in range(index * e.nstart, (index + 1) * e.nstart):
            x = &e.exchanges[i]
            if x.state != WAIT_HANDSHAKE:
                continue
            if recovery:
                start_request(e, c, x, now)
            else:
                schedule(e, c, x, now, e.interval_ns)
        index = ring_pop(&e.handshakes_done)


cdef inline void responded(Engine* e, Client* c, int code) noexcept nogil:
    c.last_code = code
    c.completed += 1
    if not c.started:
        c.started = True
        e.pending -= 1


cdef void count_notify(Engine* e, Client* c, Exchange* x, uint64_t now) noexcept nogil:
    """Observe mode: one more notification of the client's relation."""
    if e.notifies_limited and e.notifies_remaining == 0:
        return      # the run has ended: notifications read with the last one are not in it
    e.total.notifies += 1
    x.notifies += 1
    if e.notifies_limited:
        if e.notifies_remaining > 0:
            e.notifies_remaining -= 1
        if e.notifies_remaining == 0:
            lg_store(&e.stop, 1)     # all expected notifications are there: the run is done
            return
    if e.register and x.notifies % e.register == 0:
        # Forget the relation (the server's next notification gets an RST) and register anew.
        register_request(e, c, x, now, True)
    elif e.reregister and x.notifies % e.reregister == 0:
        register_request(e, c, x, now, False)


cdef inline uint32_t find_option(const MessageView* view, uint16_t number,
                                 bint* present) noexcept nogil:
    cdef int i
    for i in range(view.option_count):
        if view.options[i].number == number:
            present[0] = True
            return option_uint(&view.options[i])
    present[0] = False
    return 0


cdef bint next_block(Engine* e, Client* c, Exchange* x, const MessageView* view,
                     uint64_t now) noexcept nogil:
    """Follow a block-wise transfer: True if the next block was requested."""
    cdef bint present
    cdef uint32_t value
    if view.code == CODE_CONTINUE and e.payload_blockwise and x.block2_num == 0:
        x.block1_offset += block_bytes(x.block1_szx)
        value = find_option(view, OPTION_BLOCK1, &present)
        if present and (value & 7) < x.block1_szx:
            # The server wants smaller blocks (RFC 7959 §2.5, figure 6): the block it got
            # counts, the rest goes at its size.
            x.block1_szx = value & 7
        if x.block1_offset < e.payload_length:
            x.blockwise = True
            e.total.blocks += 1
            send_message(e, c, x, now)
            return True
        return False
    if (view.code >> 5) != 2:
        return False
    value = find_option(view, OPTION_BLOCK2, &present)
    if not present or not (value & 8) or (value & 7) == 7:
        return False
    x.block2_num = (value >> 4) + 1
    x.block2_szx = value & 7
    x.blockwise = True
    e.total.blocks += 1
    send_message(e, c, x, now)
    return True


cdef void complete(Engine* e, Client* c, Exchange* x, uint64_t now,
                   const MessageView* view) noexcept nogil:
    """The (last) response of a request is there: account for it and go on."""
    cdef int code = view.code
    cdef bint present
    cdef uint32_t max_age
    if next_block(e, c, x, view, now):
        return
    if (code >> 5) == 2:
        e.total.success += 1
        record_latency(e, c, x, now, &e.success_latency)
        responded(e, c, code)
        if e.observe and x.state != OBSERVING:
            find_option(view, OPTION_OBSERVE, &present)
            if present:
                x.state = OBSERVING
                x.deadline_ns = 0
                count_notify(e, c, x, now)
                return
        if park_for_handshake(e, c, x):
            return
        schedule(e, c, x, now, e.interval_ns)
        return
    e.total.error_responses += 1
    record_latency(e, c, x, now, &e.error_latency)
    responded(e, c, code)
    if code == CODE_SERVICE_UNAVAILABLE:
        e.total.unavailable += 1
        max_age = find_option(view, OPTION_MAX_AGE, &present)
        if not present:
            max_age = DEFAULT_MAX_AGE
        schedule(e, c, x, now, max(<uint64_t>max_age * 1000000000, <uint64_t>1000000000))
    elif e.no_stop:
        e.total.transmission_errors += 1
        schedule(e, c, x, now, e.retry_delay_ns)
    else:
        stop_client(e, c)


cdef void report_failure(Engine* e, Client* c, uint64_t started_ns, uint64_t now, int code,
                         int err, bint failed) noexcept nogil:
    """Queue a failed request for Python's per-client line (dropped, counted, when Python is
    that far behind)."""
    cdef ErrorRing* r = &e.errors
    cdef ErrorEvent* event
    cdef int tail, following
    if r.capacity == 0:
        return
    tail = r.tail
    following = (tail + 1) % r.capacity
    if following == lg_load(&r.head):
        r.dropped += 1
        return
    event = &r.slots[tail]
    event.client = <int>(c - e.clients)
    event.count = c.completed
    event.code = code
    event.err = err
    event.seconds = <uint32_t>((now - started_ns) // 1000000000) if now > started_ns else 0
    event.failed = failed
    lg_store(&r.tail, following)


cdef void fail(Engine* e, Client* c, Exchange* x, uint64_t now, int code) noexcept nogil:
    """No response (timeout) or an RST: Californium's onError()."""
    if code == -1:
        e.total.rejects += 1
    else:
        e.total.timeouts += 1
    e.total.transmission_errors += 1
    c.last_code = code
    if e.no_stop or (not e.confirmable and e.transport != TRANSPORT_TCP):
        report_failure(e, c, x.started_ns, now, code, 0, False)
        give_back(e, c)
        if e.confirmable and e.dtls_recovery and c.cipher != NULL:
            # Californium: after a failed CON request over DTLS the retry forces a full
            # handshake (the server may have lost the session: a restarted node)
            c.force_handshake = True
        x.state = WAIT_DELAY
        x.deadline_ns = now + pause_ns(e, e.retry_delay_ns)
    else:
        report_failure(e, c, x.started_ns, now, code, 0, True)
        stop_client(e, c)


# -- reverse mode: the client's feed resources -----------------------------------------------

cdef void count_reverse(Engine* e) noexcept nogil:
    e.total.reverse_responses += 1
    if e.reverse_limited and e.reverse_remaining > 0:
        e.reverse_remaining -= 1


cdef int64_t feed_interval_ms(Engine* e) noexcept nogil:
    """Californium's Feed: the interval before the next notification, min if min = max, else
    "cubic" random in [min, max): (int) (r^3 * (max - min)) + min with r in [0, 1), so short
    intervals are the common ones. Not positive: that long after the previous one completed."""
    cdef double r
    if e.feed_max_ms <= e.feed_min_ms:
        return e.feed_min_ms
    r = <double>(next_random(e) >> 11) * (1.0 / 9007199254740992.0)    # 53 bits
    return <int64_t>(r * r * r * <double>(e.feed_max_ms - e.feed_min_ms)) + e.feed_min_ms


cdef inline uint64_t feed_delay_ns(int64_t ms) noexcept nogil:
    """An interval's pause (its amount after completion if not positive), at least 20 ms."""
    if ms < 0:
        ms = -ms
    return <uint64_t>max(ms, MIN_FEED_INTERVAL_MS) * 1000000


cdef inline int feed_text(char* text, int client, uint64_t counter) noexcept nogil:
    """Californium's Feed text: "hello <client> feed-<counter>" (its length)."""
    return snprintf(text, FEED_TEXT_SIZE, "hello %d feed-%llu", client,
                    <unsigned long long>counter)


cdef uint32_t feed_size(Engine* e, Client* c, uint64_t counter, int rlen) noexcept nogil:
    """The size of a representation: rlen, or (0) the text's own length."""
    cdef char text[FEED_TEXT_SIZE]
    if rlen > 0:
        return <uint32_t>rlen
    return <uint32_t>feed_text(text, <int>(c - e.clients), counter)


cdef void send_reply(Engine* e, Client* c, const FeedReply* r) noexcept nogil:
    """Build a feed's answer from its description and send it: the same bytes every time
    (retransmissions, duplicates). The representation is the text cut or padded with '*' to
    rlen; block-wise, only block NUM of it, with Block2 (and Size2 in the first of several)."""
    cdef uint8_t buffer[DATAGRAM_SIZE]
    cdef char text[FEED_TEXT_SIZE]
    cdef Writer w
    cdef int text_length
    cdef uint32_t i, total, size, start = 0, end
    writer_init(&w, buffer, DATAGRAM_SIZE)
    if r.code == 0:     # an empty ACK
        write_header(&w, r.type, 0, r.mid, NULL, 0)
        client_send(e, c, buffer, writer_length(&w))
        return
    write_header(&w, r.type, r.code, r.mid, r.token, r.token_length)
    if r.blockwise and r.counter > 0:
        # RFC 7959 §2.4: the blocks of one representation share an ETag (its counter), so
        # that a server fetching two transfers of the feed at once tells them apart
        write_uint_option(&w, OPTION_ETAG, r.counter)
    if r.observing:
        write_uint_option(&w, OPTION_OBSERVE, r.observe & 0xFFFFFF)
    write_uint_option(&w, OPTION_CONTENT_FORMAT, 0)
    text_length = feed_text(text, <int>(c - e.clients), r.counter)
    total = <uint32_t>r.rlen if r.rlen > 0 else <uint32_t>text_length
    end = total
    if r.blockwise:
        size = block_bytes(r.szx)
        start = r.num * size
        end = min(start + size, total)
        write_uint_option(&w, OPTION_BLOCK2,
                          (r.num << 4) | (<uint32_t>(end < total) << 3) | r.szx)
        if r.num == 0 and end < total:
            write_uint_option(&w, OPTION_SIZE2, total)
    if w.overflow or start >= end or w.end - w.pos < <Py_ssize_t>(1 + end - start):
        return      # cannot happen: answers larger than one block go block-wise
    w.pos[0] = 0xFF
    w.pos += 1
    for i in range(start, end):
        w.pos[i - start] = text[i] if i < <uint32_t>text_length else 42    # '*'
    w.pos += end - start
    client_send(e, c, buffer, writer_length(&w))


cdef void send_error(Engine* e, Client* c, const MessageView* view, int type, uint16_t mid,
                     int code, const char* text, int length) noexcept nogil:
    """An error answer (rare): with a diagnostic text as Californium's respond(code, text)
    (Content-Format text/plain), or empty."""
    cdef uint8_t buffer[DATAGRAM_SIZE]
    cdef Writer w
    writer_init(&w, buffer, DATAGRAM_SIZE)
    write_header(&w, type, code, mid, view.token, view.token_length)
    if length > 0:
        write_uint_option(&w, OPTION_CONTENT_FORMAT, 0)
        write_payload(&w, <const uint8_t*>text, length)
    e.total.feed_errors += 1
    if not w.overflow:
        client_send(e, c, buffer, writer_length(&w))


cdef int query_error(char* out, const OptionView* query, const char* reason) noexcept nogil:
    """UriQueryParameter's text for a query as it came: "URI-query-option '<query>' <reason>"."""
    cdef int length = min(<int>query.length, QUERY_TEXT_SIZE - 128)
    cdef int head = snprintf(out, QUERY_TEXT_SIZE, "URI-query-option '")
    memcpy(out + head, query.value, length)
    return head + length + snprintf(out + head + length, QUERY_TEXT_SIZE - head - length,
                                    "' %s", reason)


cdef bint java_parse_int(const uint8_t* text, int length, int* out) noexcept nogil:
    """Java's Integer.parseInt (ASCII digits): an optional sign, digits, within int range."""
    cdef int i = 0
    cdef int64_t value = 0
    cdef bint negative = False
    if length > 0 and (text[0] == 45 or text[0] == 43):     # '-', '+'
        negative = text[0] == 45
        i = 1
    if i >= length:
        return False
    while i < length:
        if text[i] < 48 or text[i] > 57:
            return False
        value = value * 10 + (text[i] - 48)
        if value > <int64_t>2147483648:
            return False
        i += 1
    if negative:
        value = -value
    if value > <int64_t>2147483647:
        return False
    out[0] = <int>value
    return True


cdef inline bint query_named(const OptionView* query, const char* name,
                             int length) noexcept nogil:
    """Whether the query's name (up to the first '=') is *name*."""
    return (query.length >= length and memcmp(query.value, name, length) == 0
            and (query.length == length or query.value[length] == 61))    # '='


cdef inline void set_block_status(Engine* e, Client* c, int feed, bint valid) noexcept nogil:
    """The feed's Block2 status, with the count of open ones (the run waits for them)."""
    if valid and not c.block_valid[feed]:
        e.blocks_open += 1
    elif c.block_valid[feed] and not valid:
        e.blocks_open -= 1
    c.block_valid[feed] = valid


cdef void keep_blocks(Engine* e, Client* c, int feed, const FeedReply* r) noexcept nogil:
    """Californium's Block2 status of a new representation: kept while the server has further
    blocks to fetch (a new one replaces it; one in a single block ends it)."""
    if not r.blockwise:
        return
    if block_bytes(r.szx) < feed_size(e, c, r.counter, r.rlen):
        set_block_status(e, c, feed, True)
        c.block_counter[feed] = r.counter
        c.block_rlen[feed] = r.rlen
    else:
        set_block_status(e, c, feed, False)


cdef inline void plan_blocks(Engine* e, Client* c, FeedReply* r, bint asked,
                             int szx) noexcept nogil:
    """Californium's BlockwiseLayer: Block2 when the request asked for it (early negotiation,
    at most our block size), or when the body is larger than MAX_MESSAGE_SIZE (blocks of our
    preferred size; both are --blocksize, or 1024)."""
    if asked:
        r.blockwise = True
        r.szx = <uint8_t>min(szx, e.feed_szx)
    else:
        r.szx = <uint8_t>e.feed_szx
        r.blockwise = feed_size(e, c, r.counter, r.rlen) > block_bytes(e.feed_szx)


cdef inline void reply_to(FeedReply* r, int type, uint16_t mid,
                          const MessageView* view) noexcept nogil:
    memset(r, 0, sizeof(FeedReply))
    r.type = <uint8_t>type
    r.code = CODE_CONTENT
    r.mid = mid
    r.token_length = view.token_length
    memcpy(r.token, view.token, view.token_length)


cdef void answer(Engine* e, Client* c, const MessageView* view, FeedReply* r) noexcept nogil:
    """Send an answer to the server's request; a CON request's is kept for its duplicates."""
    send_reply(e, c, r)
    if view.type == CON:
        c.has_request_mid = True
        c.request_reply = r[0]


cdef void end_observation(Engine* e, Client* c) noexcept nogil:
    if c.observed:
        c.observed = False
        e.observers -= 1
    c.notify_pending = False
    c.notify_due_ns = 0


cdef void send_notification(Engine* e, Client* c, uint64_t now,
                            bint retransmission) noexcept nogil:
    cdef int64_t interval
    cdef FeedReply* n = &c.notify
    if not retransmission:
        # a new representation (Feed.handleGET on changed()), in blocks if it is large
        memset(n, 0, sizeof(FeedReply))
        e.feed_started += 1
        c.mid = (c.mid + 1) & 0xFFFF
        c.observe_sequence += 1
        n.type = CON if c.observed_con else NON
        n.code = CODE_CONTENT
        n.mid = c.mid
        n.token_length = c.observer_token_length
        memcpy(n.token, c.observer_token, c.observer_token_length)
        n.observing = True
        n.observe = c.observe_sequence
        n.counter = e.feed_started
        n.rlen = c.observer_rlen
        plan_blocks(e, c, n, c.observer_block2, c.observer_szx)
        keep_blocks(e, c, 1 if c.observed_con else 0, n)
        e.total.feed_notifies += 1
        count_reverse(e)
    send_reply(e, c, n)
    if c.observed_con:
        if not retransmission:
            c.notify_pending = True
            c.notify_retransmits = 0
            c.notify_timeout_ns = e.ack_timeout_ns + next_random(e) % (e.ack_timeout_ns // 2 + 1)
            # the next one is due after the interval, or (not positive) after this one's ACK
            interval = feed_interval_ms(e)
            if interval > 0:
                c.notify_due_ns = now + feed_delay_ns(interval)
            else:
                c.notify_due_ns = 0
                c.notify_after_ms = <uint32_t>(-interval)
        c.notify_resend_ns = now + c.notify_timeout_ns
    elif not retransmission:
        c.notify_due_ns = now + feed_delay_ns(feed_interval_ms(e))  # a NON completes when sent


cdef void feed_timers(Engine* e, Client* c, uint64_t now) noexcept nogil:
    if c.in_handshake:
        return
    if c.separate_pending and now >= c.separate_resend_ns:
        if c.separate_retransmits < e.max_retransmit:
            c.separate_retransmits += 1
            c.separate_timeout_ns *= 2
            c.separate_resend_ns = now + c.separate_timeout_ns
            send_reply(e, c, &c.separate)
        else:
            e.total.feed_failures += 1
            c.separate_pending = False
    if not c.observed:
        return
    if c.notify_pending and now >= c.notify_resend_ns:
        if c.notify_retransmits < e.max_retransmit:
            c.notify_retransmits += 1
            c.notify_timeout_ns *= 2
            send_notification(e, c, now, True)
        else:
            e.total.feed_failures += 1    # Californium: "notifies could not be completed"
            end_observation(e, c)
        return
    if c.notify_due_ns and now >= c.notify_due_ns and not c.notify_pending:
        send_notification(e, c, now, False)


cdef bint feed_empty_message(Engine* e, Client* c, const MessageView* view,
                             uint64_t now) noexcept nogil:
    """An ACK or RST for a separate response or a notification: True if it was one."""
    if c.separate_pending and view.mid == c.separate.mid:
        c.separate_pending = False      # acknowledged, or rejected: either way done
        return True
    if not c.observed or view.mid != c.notify.mid:
        return False
    if view.type == RST:
        end_observation(e, c)    # the server cancelled (reactive cancel)
        return True
    if view.type == ACK and c.notify_pending:
        c.notify_pending = False
        if c.notify_due_ns == 0:
            c.notify_due_ns = now + feed_delay_ns(c.notify_after_ms)
        return True
    return False


cdef void serve_block(Engine* e, Client* c, const MessageView* view, int feed, int type,
                      uint16_t mid, uint32_t num, int szx) noexcept nogil:
    """A further block of the kept representation (Californium's BlockwiseLayer answers it
    from its Block2 status, the resource does not see it); the last one ends the status."""
    cdef FeedReply reply
    cdef uint32_t total = feed_size(e, c, c.block_counter[feed], c.block_rlen[feed])
    reply_to(&reply, type, mid, view)
    reply.counter = c.block_counter[feed]
    reply.rlen = c.block_rlen[feed]
    reply.blockwise = True
    reply.num = num
    reply.szx = <uint8_t>min(szx, e.feed_szx)
    if <uint64_t>num * block_bytes(reply.szx) >= total:
        send_error(e, c, view, type, mid, CODE_BAD_OPTION, NULL, 0)
        return
    answer(e, c, view, &reply)
    if <uint64_t>(num + 1) * block_bytes(reply.szx) >= total:
        set_block_status(e, c, feed, False)
    e.total.feed_blocks += 1


cdef void feed_request(Engine* e, Client* c, const MessageView* view,
                       uint64_t now) noexcept nogil:
    """A request of the server (reverse mode) as Californium's Feed.handleGET answers it:
    GET feed-CON or feed-NON, maybe observing, maybe (?ack) separately, maybe a further
    block of the last answer. Error answers (4.02 with UriQueryParameter's texts, 4.06 for
    an Accept other than text/plain, 4.04, 4.05) are built here too, without Python."""
    cdef const OptionView* option
    cdef const OptionView* unsupported = NULL
    cdef const OptionView* rlen_query = NULL
    cdef char text[QUERY_TEXT_SIZE]
    cdef int i, segments = 0, rlen = 0, szx = 6, feed, value = 0
    cdef bint feed_con = False, known = False, has_observe = False, observing
    cdef bint ack = False, has_block2 = False, rlen_ok = True
    cdef uint32_t observe = 0, block2 = 0, num = 0
    cdef int64_t accept = -1
    cdef int reply_type = ACK if view.type == CON else NON
    cdef uint16_t reply_mid = view.mid
    cdef FeedReply reply
    cdef FeedReply accepted
    if view.type == CON and c.has_request_mid and view.mid == c.request_reply.mid:
        send_reply(e, c, &c.request_reply)  # our answer got lost: the same again, counted once
        return
    for i in range(view.option_count):
        option = &view.options[i]
        if option.number == OPTION_URI_PATH:
            segments += 1
            if option.length == 8 and memcmp(option.value, b"feed-CON", 8) == 0:
                known = feed_con = True
            elif option.length == 8 and memcmp(option.value, b"feed-NON", 8) == 0:
                known = True
        elif option.number == OPTION_URI_QUERY:
            if query_named(option, b"rlen", 4):
                rlen_query = option     # a HashMap: the last one counts
            elif query_named(option, b"ack", 3):
                ack = True
            elif unsupported == NULL:
                unsupported = option    # the first one is reported
        elif option.number == OPTION_OBSERVE:
            has_observe = True
            observe = option_uint(option)
        elif option.number == OPTION_ACCEPT:
            accept = option_uint(option)
        elif option.number == OPTION_BLOCK2:
            has_block2 = True
            block2 = option_uint(option)
    if view.type != CON:
        c.mid = (c.mid + 1) & 0xFFFF
        reply_mid = c.mid
    if not known or segments != 1:
        send_error(e, c, view, reply_type, reply_mid, CODE_NOT_FOUND, NULL, 0)
        return
    if view.code != 1:
        send_error(e, c, view, reply_type, reply_mid, CODE_METHOD_NOT_ALLOWED, NULL, 0)
        return
    feed = 1 if feed_con else 0
    if has_block2:
        num = block2 >> 4
        szx = block2 & 7
    if rlen_query != NULL and rlen_query.length > 4:    # "rlen" alone: the default, 0
        rlen_ok = java_parse_int(rlen_query.value + 5, rlen_query.length - 5, &value)
        rlen = value
    if (num > 0 and c.block_valid[feed] and unsupported == NULL and rlen_ok
            and rlen == c.block_rlen[feed]):
        serve_block(e, c, view, feed, reply_type, reply_mid, num, szx)
        return
    # Feed.handleGET
    if accept >= 0 and accept != 0:
        send_error(e, c, view, reply_type, reply_mid, CODE_NOT_ACCEPTABLE, NULL, 0)
        return
    if unsupported != NULL:
        send_error(e, c, view, reply_type, reply_mid, CODE_BAD_OPTION, text,
                   query_error(text, unsupported, "is not supported!"))
        return
    if not rlen_ok:
        send_error(e, c, view, reply_type, reply_mid, CODE_BAD_OPTION, text,
                   query_error(text, rlen_query, "is no number!"))
        return
    if rlen < 0 or rlen > MAX_RESOURCE_BODY_SIZE:
        value = 0 if rlen < 0 else MAX_RESOURCE_BODY_SIZE
        value = snprintf(text, QUERY_TEXT_SIZE, "URI-query-option 'rlen=%d' is %s than %d!",
                         rlen, "less" if rlen < 0 else "more", value)
        send_error(e, c, view, reply_type, reply_mid, CODE_BAD_OPTION, text, value)
        return
    e.feed_started += 1
    reply_to(&reply, reply_type, reply_mid, view)
    reply.counter = e.feed_started
    reply.rlen = <uint16_t>rlen
    plan_blocks(e, c, &reply, has_block2, szx)
    reply.num = num     # > 0: random access, a block of the new representation
    if <uint64_t>num * block_bytes(reply.szx) >= feed_size(e, c, reply.counter, rlen):
        send_error(e, c, view, reply_type, reply_mid, CODE_BAD_OPTION, NULL, 0)
        return
    observing = has_observe and observe == 0
    if observing:
        if not c.observed:
            e.observers += 1
        c.observed = True
        c.observed_con = feed_con
        c.observer_token_length = view.token_length
        memcpy(c.observer_token, view.token, view.token_length)
        c.observer_rlen = <uint16_t>rlen
        c.observer_block2 = has_block2
        c.observer_szx = reply.szx
        c.notify_pending = False
        c.notify_due_ns = now + feed_delay_ns(feed_interval_ms(e))  # after our answer
        e.total.feed_registrations += 1
        reply.observing = True
        reply.observe = c.observe_sequence
    elif has_observe and observe == 1 and c.observed and view.token_length == (
            c.observer_token_length) and memcmp(view.token, c.observer_token,
                                                view.token_length) == 0:
        end_observation(e, c)
    if ack and not observing and view.type == CON:
        # exchange.accept(): an empty ACK at once, then the response as CON (retransmitted
        # until acknowledged)
        memset(&accepted, 0, sizeof(FeedReply))
        accepted.type = ACK
        accepted.mid = view.mid
        answer(e, c, view, &accepted)
        c.mid = (c.mid + 1) & 0xFFFF
        reply.type = CON
        reply.mid = c.mid
        c.separate = reply
        c.separate_pending = True
        c.separate_retransmits = 0
        c.separate_timeout_ns = (e.ack_timeout_ns
                                 + next_random(e) % (e.ack_timeout_ns // 2 + 1))
        c.separate_resend_ns = now + c.separate_timeout_ns
        send_reply(e, c, &c.separate)
        e.total.feed_separate += 1
    else:
        answer(e, c, view, &reply)
    if num == 0:
        keep_blocks(e, c, feed, &reply)
    count_reverse(e)


cdef inline uint32_t token_of(const MessageView* view) noexcept nogil:
    cdef const uint8_t* t = view.token
    return (<uint32_t>t[0] << 24) | (<uint32_t>t[1] << 16) | (<uint32_t>t[2] << 8) | t[3]


cdef Exchange* by_mid(Engine* e, Client* c, uint16_t mid) noexcept nogil:
    cdef Exchange* x
    cdef int i
    cdef int first = <int>(c - e.clients) * e.nstart
    for i in range(first, first + e.nstart):
        x = &e.exchanges[i]
        if x.mid == mid and (x.state == WAIT_ACK or x.state == WAIT_RESPONSE):
            return x
    return NULL


cdef Exchange* by_token(Engine* e, Client* c, const MessageView* view) noexcept nogil:
    cdef Exchange* x
    cdef uint32_t token
    cdef int i
    cdef int first = <int>(c - e.clients) * e.nstart
    if view.token_length != TOKEN_LENGTH:
        return NULL
    token = token_of(view)
    for i in range(first, first + e.nstart):
        x = &e.exchanges[i]
        if x.token == token and (x.state == WAIT_ACK or x.state == WAIT_RESPONSE
                                 or x.state == OBSERVING):
            return x
    return NULL


cdef void on_datagram(Engine* e, Client* c, uint64_t now,
                      const uint8_t* data, ssize_t length) noexcept nogil:
    cdef MessageView view
    cdef Exchange* x
    if c.stopped or parse_view(data, length, &view) != PARSE_OK:
        e.total.ignored += 1
        return
    if view.code == 0:
        if e.serve_feeds and feed_empty_message(e, c, &view, now):
            return
        x = by_mid(e, c, view.mid)
        if x != NULL:
            if view.type == ACK and x.state == WAIT_ACK:
                # Empty ACK: the server answers separately; stop retransmitting and wait.
                x.state = WAIT_RESPONSE
                x.deadline_ns = now + e.response_timeout_ns
                return
            if view.type == RST:
                fail(e, c, x, now, -1)
                return
        if view.type == CON:
            send_empty(e, c, RST, view.mid)     # CoAP ping
        else:
            e.total.ignored += 1
        return
    if view.code < 32 and e.serve_feeds:
        feed_request(e, c, &view, now)
        return
    if view.code < 64:
        # A request (we serve nothing) or a reserved code.
        if view.type == CON:
            send_empty(e, c, RST, view.mid)
        e.total.ignored += 1
        return
    x = by_token(e, c, &view)
    if view.type == ACK:
        if x != NULL and not (x.state == WAIT_ACK and view.mid == x.mid):
            x = NULL
    elif view.type == CON:
        if x != NULL:
            send_empty(e, c, ACK, view.mid)
            c.acked_mid = view.mid
            c.has_acked_mid = True
        elif c.has_acked_mid and view.mid == c.acked_mid:
            # Our ACK of the previous separate response was lost: acknowledge it again.
            send_empty(e, c, ACK, view.mid)
            return
        else:
            send_empty(e, c, RST, view.mid)
    elif view.type == RST:
        x = NULL
    elif x == NULL and e.observe:
        send_empty(e, c, RST, view.mid)     # a NON notification of a forgotten relation
    if x == NULL:
        e.total.ignored += 1
        return
    if x.state == OBSERVING:
        count_notify(e, c, x, now)
        return
    complete(e, c, x, now, &view)


# -- coap+tcp (RFC 8323) ---------------------------------------------------------------------

cdef inline bint want_write(Engine* e, Client* c, bint write) noexcept nogil:
    cdef epoll_event event
    event.events = EPOLLIN | (EPOLLOUT if write else 0)
    event.data.u64 = 0
    event.data.u32 = <uint32_t>(c - e.clients)
    if epoll_ctl(e.epfd, EPOLL_CTL_MOD, c.fd, &event) < 0:
        return not write
    return write


cdef void tcp_closed(Engine* e, Client* c, int err) noexcept nogil:
    """The connection ended (FIN, a socket error, an Abort): each outstanding request is a
    transmission error, and the client stops for good."""
    cdef Exchange* x
    cdef int i
    cdef int first = <int>(c - e.clients) * e.nstart
    if c.closed:
        return
    c.closed = True
    c.want_write = False
    c.tx_length = 0
    c.rx_length = 0
    epoll_ctl(e.epfd, EPOLL_CTL_DEL, c.fd, NULL)
    e.total.connections_closed += 1
    c.last_code = -3
    if err:
        c.last_error = err
    if not c.stopped:
        for i in range(first, first + e.nstart):
            x = &e.exchanges[i]
            if x.state == WAIT_ACK or x.state == WAIT_RESPONSE or x.state == OBSERVING:
                e.total.transmission_errors += 1
        report_failure(e, c, 0, 0, -3, err, True)
        stop_client(e, c)
    if e.stop_on_error and <int>(c - e.clients) < e.run_clients:
        lg_store(&e.stop, 1)


cdef ssize_t stream_send(Client* c, const uint8_t* data, Py_ssize_t length,
                         int* err) noexcept nogil:
    """send(), or SSL_write() over TLS: bytes taken, or -1 with *err (0: try again later).
    A TLS write that has to wait keeps its record: it is retried with the same bytes first
    (they stay at the head of the send buffer), so partial and moving-buffer writes are on."""
    cdef ssize_t sent
    cdef int n, code
    err[0] = 0
    if c.ssl == NULL:
        sent = send(c.fd, data, length, MSG_NOSIGNAL)
        if sent < 0 and errno != EAGAIN and errno != EINTR:
            err[0] = errno
        return sent
    ERR_clear_error()
    n = SSL_write(<SSL*>c.ssl, data, <int>length)
    if n > 0:
        return n
    code = SSL_get_error(<SSL*>c.ssl, n)
    if code == SSL_ERROR_WANT_WRITE or code == SSL_ERROR_WANT_READ:
        return -1
    if code == SSL_ERROR_SYSCALL and errno != 0 and errno != EAGAIN and errno != EINTR:
        err[0] = errno
    else:
        err[0] = EPIPE if code == SSL_ERROR_SYSCALL or code == SSL_ERROR_ZERO_RETURN else EPROTO
    return -1


cdef ssize_t stream_recv(Engine* e, Client* c, uint8_t* buffer, Py_ssize_t length,
                         int* err) noexcept nogil:
    """recv(), or SSL_read() over TLS: bytes read, 0 at the end of the stream, or -1 with
    *err (0: nothing to read now)."""
    cdef ssize_t n
    cdef int code
    err[0] = 0
    if c.ssl == NULL:
        n = recv(c.fd, buffer, length, 0)
        if n < 0 and errno != EAGAIN and errno != EINTR:
            err[0] = errno
        return n
    ERR_clear_error()
    n = SSL_read(<SSL*>c.ssl, buffer, <int>length)
    if n > 0:
        return n
    code = SSL_get_error(<SSL*>c.ssl, <int>n)
    if code == SSL_ERROR_WANT_READ:
        return -1
    if code == SSL_ERROR_WANT_WRITE:
        # TLS wants to write first (a key update, say): wait for EPOLLOUT, then read again
        if not c.want_write:
            c.want_write = want_write(e, c, True)
        return -1
    if code == SSL_ERROR_ZERO_RETURN:
        return 0                    # close_notify (or an EOF, SSL_OP_IGNORE_UNEXPECTED_EOF)
    if code == SSL_ERROR_SYSCALL:
        if errno == EAGAIN or errno == EINTR:
            return -1
        if errno == 0:
            return 0
        err[0] = errno
    else:
        err[0] = EPROTO             # a TLS alert or a bad record
    return -1


cdef void tcp_send(Engine* e, Client* c, const uint8_t* data, Py_ssize_t length) noexcept nogil:
    """Write one frame; what the socket does not take waits in the client's send buffer (and
    goes out on EPOLLOUT). A full buffer gives the connection up."""
    cdef ssize_t sent = 0
    cdef int err
    if c.closed:
        return
    if c.tx_length == 0:
        sent = stream_send(c, data, length, &err)
        if sent == length:
            return
        if sent < 0:
            if err:
                tcp_closed(e, c, err)
                return
            sent = 0
    if c.tx_length + (length - sent) > TX_CAPACITY:
        tcp_closed(e, c, ENOBUFS)
        return
    if c.tx == NULL:
        c.tx = <uint8_t*>malloc(TX_CAPACITY)
        if c.tx == NULL:
            tcp_closed(e, c, ENOMEM)
            return
    memcpy(c.tx + c.tx_length, data + sent, length - sent)
    c.tx_length += length - sent
    if not c.want_write:
        c.want_write = want_write(e, c, True)


cdef void tcp_flush(Engine* e, Client* c) noexcept nogil:
    """EPOLLOUT: write what waits in the send buffer."""
    cdef ssize_t sent
    cdef int err
    if c.closed:
        return
    if c.tx_length > 0:
        sent = stream_send(c, c.tx, c.tx_length, &err)
        if sent < 0:
            if err:
                tcp_closed(e, c, err)
            return
        if sent < c.tx_length:
            memmove(c.tx, c.tx + sent, c.tx_length - sent)
        c.tx_length -= sent
    if c.tx_length == 0 and c.want_write:
        c.want_write = want_write(e, c, False)


cdef void tcp_send_datagram(Engine* e, Client* c, const uint8_t* message,
                            Py_ssize_t length) noexcept nogil:
    """A message built as a datagram (block-wise), sent as a frame: type and MID dropped."""
    cdef uint8_t frame[DATAGRAM_SIZE + FRAME_ROOM]
    tcp_send(e, c, frame, frame_from_datagram(message, length, frame))


cdef void send_signal(Engine* e, Client* c, int code, const uint8_t* token,
                      int token_length) noexcept nogil:
    """A frame without options and payload (Pong, Abort, a 5.01 for a server's request)."""
    cdef uint8_t frame[2 + 8]
    frame[0] = <uint8_t>token_length
    frame[1] = <uint8_t>code
    if token_length:  # an Abort has no token: memcpy from NULL is undefined even for 0 bytes
        memcpy(frame + 2, token, token_length)
    tcp_send(e, c, frame, 2 + token_length)


cdef void send_csm(Engine* e, Client* c) noexcept nogil:
    """Our CSM (§5.3), the first frame on the connection: Max-Message-Size, no BERT."""
    cdef uint8_t csm[5]
    csm[0] = 0x30                   # Len 3, TKL 0
    csm[1] = SIGNAL_CSM
    csm[2] = 0x22                   # option 2 (Max-Message-Size), 2 bytes
    csm[3] = TCP_MAX_MESSAGE_SIZE >> 8
    csm[4] = TCP_MAX_MESSAGE_SIZE & 0xFF
    c.csm_sent = True
    tcp_send(e, c, csm, 5)


cdef void protocol_error(Engine* e, Client* c) noexcept nogil:
    """A malformed or oversized frame from the server: Abort (§5.6) and give up."""
    e.total.protocol_errors += 1
    send_signal(e, c, SIGNAL_ABORT, NULL, 0)
    tcp_closed(e, c, EPROTO)


cdef uint32_t csm_max_message_size(const uint8_t* body, Py_ssize_t length) noexcept nogil:
    """Max-Message-Size (option 2) of a CSM's options; the base value without it (§5.3.1)."""
    cdef Py_ssize_t p = 0
    cdef uint32_t number = 0, delta, size, value = BASE_MAX_MESSAGE_SIZE
    cdef uint32_t i
    while p < length and body[p] != 0xFF:
        delta = body[p] >> 4
        size = body[p] & 0x0F
        p += 1
        if delta == 15 or size == 15:
            break
        if delta == 13 and p < length:
            delta = body[p] + 13
            p += 1
        elif delta == 14 and p + 1 < length:
            delta = ((<uint32_t>body[p] << 8) | body[p + 1]) + 269
            p += 2
        if size == 13 and p < length:
            size = body[p] + 13
            p += 1
        elif size == 14 and p + 1 < length:
            size = ((<uint32_t>body[p] << 8) | body[p + 1]) + 269
            p += 2
        if p + size > length:
            break
        number += delta
        if number == 2 and size <= 4:
            value = 0
            for i in range(size):
                value = (value << 8) | body[p + i]
        p += size
    return value


cdef void tcp_signal(Engine* e, Client* c, const uint8_t* frame,
                     const FrameHeader* h) noexcept nogil:
    cdef const uint8_t* token = frame + h.token_offset
    if h.code == SIGNAL_CSM:
        e.total.csm_received += 1
        c.peer_max_message_size = csm_max_message_size(token + h.token_length, h.body_length)
    elif h.code == SIGNAL_PING:
        e.total.pings += 1          # §5.4: a Pong with the same token
        send_signal(e, c, SIGNAL_PONG, token, h.token_length)
    elif h.code == SIGNAL_RELEASE:
        e.total.releases += 1       # §5.5: no new requests; the server closes after answering
        c.released = True
    elif h.code == SIGNAL_ABORT:
        e.total.aborts += 1         # §5.6: the connection is gone
        tcp_closed(e, c, 0)
    else:
        e.total.ignored += 1        # a Pong (we send no Ping), or an unknown signal


cdef void tcp_frame(Engine* e, Client* c, uint64_t now, const uint8_t* frame,
                    const FrameHeader* h) noexcept nogil:
    """One complete frame from the server."""
    cdef MessageView view
    cdef Exchange* x
    if (h.code >> 5) == 7:
        tcp_signal(e, c, frame, h)
        return
    if h.code == 0:
        e.total.ignored += 1        # an empty message is ignored (§3.4)
        return
    if h.code < 32:
        # A request of the server: we serve nothing over TCP.
        send_signal(e, c, CODE_NOT_IMPLEMENTED, frame + h.token_offset, h.token_length)
        e.total.ignored += 1
        return
    if (c.stopped or h.code < 64 or h.token_length != TOKEN_LENGTH
            or parse_frame(frame, h, e.scratch, &view) != PARSE_OK):
        e.total.ignored += 1
        return
    x = by_token(e, c, &view)
    if x == NULL:
        e.total.ignored += 1
        return
    if x.state == OBSERVING:
        count_notify(e, c, x, now)
        return
    complete(e, c, x, now, &view)


cdef void tcp_read(Engine* e, Client* c, uint64_t now) noexcept nogil:
    """One recv after the kept incomplete frame (level-triggered epoll reports the rest); over
    TLS SSL_reads until there is nothing more, as SSL may hold what the socket delivered."""
    cdef int reads = 0
    while tcp_read_once(e, c, now):
        reads += 1
        if c.ssl == NULL or (reads >= TLS_READS and SSL_pending(<SSL*>c.ssl) == 0):
            break


cdef bint tcp_read_once(Engine* e, Client* c, uint64_t now) noexcept nogil:
    """One read after the kept incomplete frame: every complete frame is handled, the
    incomplete rest is kept (at most one frame of our Max-Message-Size). True if bytes came
    and the connection is still open."""
    cdef FrameHeader h
    cdef Py_ssize_t keep = c.rx_length, total, pos = 0, size
    cdef ssize_t n
    cdef int err
    if c.closed:
        return False
    if keep:
        memcpy(e.rx_buffer, c.rx, keep)
    n = stream_recv(e, c, e.rx_buffer + keep, READ_SIZE, &err)
    if n < 0:
        if err:
            tcp_closed(e, c, err)
        return False
    if n == 0:
        tcp_closed(e, c, 0)         # FIN (or close_notify): nothing more will come
        return False
    c.rx_length = 0
    total = keep + n
    while pos < total and not c.closed:
        size = frame_header(e.rx_buffer + pos, total - pos, &h)
        if size < 0 or size > RX_CAPACITY:
            protocol_error(e, c)
            return False
        if size == 0 or size > total - pos:
            break
        tcp_frame(e, c, now, e.rx_buffer + pos, &h)
        pos += size
    if c.closed:
        return False
    if pos == total:
        return True
    if c.rx == NULL:
        c.rx = <uint8_t*>malloc(RX_CAPACITY)
        if c.rx == NULL:
            tcp_closed(e, c, ENOMEM)
            return False
    memcpy(c.rx, e.rx_buffer + pos, total - pos)
    c.rx_length = total - pos
    return True


cdef void tcp_start(Engine* e) noexcept nogil:
    """Before a run: every connection's CSM goes out once; clients whose connection has ended
    are stopped from the start."""
    cdef Client* c
    cdef int i
    for i in range(e.client_count):
        c = &e.clients[i]
        if not c.closed and not c.csm_sent:
            send_csm(e, c)
    for i in range(e.run_clients):
        c = &e.clients[i]
        if c.closed and not c.stopped:
            c.stopped = True
            c.last_code = -3
            e.total.stopped_clients += 1
            c.busy = 0
            client_idle(e, c)


# -- coaps+tcp: TLS handshakes before the run ------------------------------------------------

cdef int tls_step(Engine* e, Client* c, int* ssl_error, int* sys_error,
                  unsigned long* lib_error) noexcept nogil:
    """One SSL_connect step: 1 done, 0 waiting (epoll watches the direction TLS wants), -1
    failed (*ssl_error, *sys_error and *lib_error say why)."""
    cdef int r, code
    ERR_clear_error()
    r = SSL_connect(<SSL*>c.ssl)
    if r == 1:
        c.tls_ready = True
        return 1
    code = SSL_get_error(<SSL*>c.ssl, r)
    if code == SSL_ERROR_WANT_READ or code == SSL_ERROR_WANT_WRITE:
        if (code == SSL_ERROR_WANT_WRITE) != c.want_write:
            c.want_write = want_write(e, c, code == SSL_ERROR_WANT_WRITE)
        return 0
    if code == SSL_ERROR_SYSCALL and (errno == EAGAIN or errno == EINTR):
        return 0
    ssl_error[0] = code
    sys_error[0] = errno if code == SSL_ERROR_SYSCALL else 0
    lib_error[0] = ERR_get_error()
    return -1


cdef int tls_handshakes(Engine* e, uint64_t deadline_ns, int* waiting, int* failed,
                        int* ssl_error, int* sys_error, unsigned long* lib_error) noexcept nogil:
    """Drive every client's handshake until all are done or *deadline_ns*: 0 (*waiting*
    still under way), 1 client *failed* failed, -1 epoll failed (*sys_error*)."""
    cdef epoll_event events[MAX_EVENTS]
    cdef uint64_t now
    cdef Client* c
    cdef int i, n, r
    waiting[0] = 0
    for i in range(e.client_count):
        c = &e.clients[i]
        if c.tls_ready or c.closed:
            continue
        r = tls_step(e, c, ssl_error, sys_error, lib_error)
        if r < 0:
            failed[0] = i
            return 1
        if r == 0:
            waiting[0] += 1
    while waiting[0] > 0:
        now = monotonic_ns()
        if now >= deadline_ns:
            return 0
        n = epoll_wait(e.epfd, events, MAX_EVENTS, <int>((deadline_ns - now + 999999) // 1000000))
        if n < 0:
            if errno == EINTR:
                continue
            sys_error[0] = errno
            return -1
        for i in range(n):
            c = &e.clients[events[i].data.u32]
            if c.tls_ready:
                continue
            r = tls_step(e, c, ssl_error, sys_error, lib_error)
            if r < 0:
                failed[0] = <int>events[i].data.u32
                return 1
            if r == 1:
                waiting[0] -= 1
    for i in range(e.client_count):
        c = &e.clients[i]
        if c.want_write and c.tx_length == 0:
            c.want_write = want_write(e, c, False)
    return 0


cdef void scan_timers(Engine* e, uint64_t now) noexcept nogil:
    cdef Exchange* x
    cdef Client* c
    cdef int i
    for i in range(e.run_clients * e.nstart):
        x = &e.exchanges[i]
        if x.deadline_ns == 0 or x.deadline_ns > now:
            continue
        c = &e.clients[x.client]
        if x.state == WAIT_DELAY:
            start_request(e, c, x, now)
        elif x.state == WAIT_ACK and x.retransmits < e.max_retransmit:
            x.retransmits += 1
            x.timeout_ns *= 2
            x.deadline_ns = now + x.timeout_ns
            x.sent_ns = now
            e.total.retransmissions += 1
            transmit(e, c, x)
        else:
            fail(e, c, x, now, -2)
    if e.serve_feeds:
        for i in range(e.run_clients):
            feed_timers(e, &e.clients[i], now)


cdef void open_window(Engine* e, uint64_t now) noexcept nogil:
    e.window_base = e.total
    memset(&e.connect_latency, 0, sizeof(Histogram))
    memset(&e.success_latency, 0, sizeof(Histogram))
    memset(&e.error_latency, 0, sizeof(Histogram))
    memset(&e.block_latency, 0, sizeof(Histogram))
    e.window_start_ns = now
    e.window_cpu_start_ns = cpu_ns()
    e.window_is_open = True


cdef void run_loop(Engine* e) noexcept nogil:
    cdef epoll_event events[MAX_EVENTS]
    cdef uint8_t buffer[DATAGRAM_SIZE]
    cdef uint64_t now = monotonic_ns()
    cdef uint64_t next_scan = now + SCAN_INTERVAL_MS * 1000000
    cdef uint64_t wait_ns
    cdef ssize_t length
    cdef Client* c
    cdef int i, n
    e.started_ns = now
    e.window_is_open = False
    e.window_open_ns = now + e.warmup_ns
    e.end_ns = e.window_open_ns + e.duration_ns if e.duration_ns else UINT64_MAX
    if e.warmup_ns == 0:
        open_window(e, now)
    e.active = e.run_clients
    e.pending = e.run_clients
    for i in range(e.run_clients):
        e.clients[i].busy = e.nstart
    if e.transport == TRANSPORT_TCP:
        tcp_start(e)
    for i in range(e.run_clients * e.nstart):
        start_request(e, &e.clients[e.exchanges[i].client], &e.exchanges[i], now)
    # Reverse mode: after its own requests a client goes on serving the server's requests,
    # and after the last one counted the further blocks the server still fetches of it (for
    # at most BLOCKS_WAIT_MS: a server that never asks for them does not hold the run).
    while (e.active > 0 or (e.reverse_limited and (
            e.reverse_remaining > 0 or e.blocks_open > 0))) and not lg_load(&e.stop):
        now = monotonic_ns()
        if now >= e.end_ns:
            break
        if e.active == 0 and e.reverse_remaining == 0:
            if e.blocks_deadline_ns == 0:
                e.blocks_deadline_ns = now + BLOCKS_WAIT_MS * 1000000
            elif now >= e.blocks_deadline_ns:
                break
        if not e.window_is_open and now >= e.window_open_ns:
            open_window(e, now)
        if now >= next_scan:
            scan_timers(e, now)
            next_scan = now + SCAN_INTERVAL_MS * 1000000
        if e.handshakes_done.capacity:
            resume_handshaken(e, now)
        wait_ns = next_scan - now if next_scan > now else 0
        if e.source_fd >= 0:
            if wait_sources(e, wait_ns) < 0 and errno != EINTR:
                e.loop_errno = errno
                break
            continue
        n = epoll_wait(e.epfd, events, MAX_EVENTS, <int>((wait_ns + 999999) // 1000000))
        if n < 0:
            if errno == EINTR:
                continue
            e.loop_errno = errno
            break
        for i in range(n):
            c = &e.clients[events[i].data.u32]
            if e.transport == TRANSPORT_TCP:
                if events[i].events & EPOLLOUT:
                    tcp_flush(e, c)
                if events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP) or (
                        c.ssl != NULL and events[i].events & EPOLLOUT):
                    tcp_read(e, c, monotonic_ns())
                continue
            # Level-triggered: read one datagram; if there is another, epoll reports it again.
            length = recv(c.fd, buffer, DATAGRAM_SIZE, 0)
            if length < 0:
                if errno != EAGAIN and errno != EINTR:
                    socket_error(e, c, errno)     # e.g. ECONNREFUSED after ICMP unreachable
                continue
            if c.cipher != NULL:
                on_records(e, c, monotonic_ns(), buffer, length)
            else:
                on_datagram(e, c, monotonic_ns(), buffer, length)
    if e.source_fd >= 0:
        flush_sources(e)    # RSTs and ACKs queued in the last round
    now = monotonic_ns()
    if not e.window_is_open:
        open_window(e, now)
    e.window_end_ns = now
    e.window_cpu_end_ns = cpu_ns()


# -- Python API ------------------------------------------------------------------------------

def build_request(bint confirmable, int code, options, bytes payload=b"",
                  int mid=0, uint32_t token=0):
    """Serialise a request with a 4-byte token; *options* are (number, bytes) pairs.

    The generator sends this template with MID and token patched in.
    """
    cdef uint8_t buffer[DATAGRAM_SIZE]
    cdef uint8_t token_bytes[TOKEN_LENGTH]
    cdef Writer w
    cdef const uint8_t* value
    cdef bytes encoded
    token_bytes[0] = token >> 24
    token_bytes[1] = (token >> 16) & 0xFF
    token_bytes[2] = (token >> 8) & 0xFF
    token_bytes[3] = token & 0xFF
    writer_init(&w, buffer, DATAGRAM_SIZE)
    write_header(&w, CON if confirmable else NON, code, mid & 0xFFFF, token_bytes, TOKEN_LENGTH)
    for number, option in sorted(options, key=_option_number):
        if isinstance(option, int):
            write_uint_option(&w, number, option)
        else:
            encoded = bytes(option)
            value = encoded
            write_option(&w, number, value, len(encoded))
    if payload:
        value = payload
        write_payload(&w, value, len(payload))
    if w.overflow:
        raise ValueError(f"request does not fit into {DATAGRAM_SIZE} bytes")
    return buffer[:writer_length(&w)]


def _option_number(entry):
    return entry[0]


def size_exponent(int size):
    """RFC 7959 SZX of a block size 16..1024 (a power of two); ValueError otherwise."""
    if size < 16 or size > 1024 or size & (size - 1):
        raise ValueError(f"block size must be 16, 32, ..., 1024, not {size}")
    return (size.bit_length() - 1) - 4


cdef dict _counters(const Counters* now, const Counters* base):
    return {
        "sent": now.sent - base.sent,
        "transmissions": now.transmissions - base.transmissions,
        "retransmissions": now.retransmissions - base.retransmissions,
        "blocks": now.blocks - base.blocks,
        "success": now.success - base.success,
        "error_responses": now.error_responses - base.error_responses,
        "unavailable": now.unavailable - base.unavailable,
        "timeouts": now.timeouts - base.timeouts,
        "rejects": now.rejects - base.rejects,
        "transmission_errors": now.transmission_errors - base.transmission_errors,
        "retried": now.retried - base.retried,
        "stopped_clients": now.stopped_clients - base.stopped_clients,
        "notifies": now.notifies - base.notifies,
        "reverse_responses": now.reverse_responses - base.reverse_responses,
        "feed_notifies": now.feed_notifies - base.feed_notifies,
        "feed_registrations": now.feed_registrations - base.feed_registrations,
        "feed_failures": now.feed_failures - base.feed_failures,
        "feed_separate": now.feed_separate - base.feed_separate,
        "feed_blocks": now.feed_blocks - base.feed_blocks,
        "feed_errors": now.feed_errors - base.feed_errors,
        "socket_errors": now.socket_errors - base.socket_errors,
        "ignored": now.ignored - base.ignored,
        "dtls_dropped": now.dtls_dropped - base.dtls_dropped,
        "connections_closed": now.connections_closed - base.connections_closed,
        "csm_received": now.csm_received - base.csm_received,
        "pings": now.pings - base.pings,
        "releases": now.releases - base.releases,
        "aborts": now.aborts - base.aborts,
        "protocol_errors": now.protocol_errors - base.protocol_errors,
    }


cdef dict _latency(const Histogram* h):
    """Latency figures in microseconds."""
    return {
        "count": h.count,
        "avg": h.sum_us / <double>h.count if h.count else 0.0,
        "sum": h.sum_us,
        "p50": percentile(h, 0.5),
        "p90": percentile(h, 0.9),
        "p95": percentile(h, 0.95),
        "p99": percentile(h, 0.99),
        "p99.9": percentile(h, 0.999),
        "max": h.max_us,
    }


cdef str _tls_reason(unsigned long code=0):
    """OpenSSL's reason for *code* (default: the thread's oldest queued error)."""
    cdef char text[256]
    if code == 0:
        code = ERR_get_error()
    ERR_clear_error()
    if code == 0:
        return "unknown error"
    ERR_error_string_n(code, text, sizeof(text))
    reason = text.decode(errors="replace")
    # "error:0A000086:SSL routines::certificate verify failed": the part after the last ':'
    return reason.rpartition(":")[2] or reason


cdef list _buckets(const Histogram* h):
    """[(upper limit in us, count), ...] of the non-empty buckets."""
    return [(bucket_upper(i), h.buckets[i]) for i in range(BUCKETS) if h.buckets[i]]


cdef class LoadGenerator:
    """Drives one emulated client per socket in *fds* (connected, non-blocking UDP sockets;
    with ``transport="tcp"`` connected, non-blocking TCP sockets that have sent nothing yet).

    With *source_first* (an IPv4 address) every entry of *fds* is the same unconnected,
    non-blocking UDP socket with IP_PKTINFO on: client i sends from address source_first + i
    to *server* ``(host, port)`` and takes the datagrams sent to that address from the server.

    ``start()`` runs the loop in a worker thread without the GIL; meanwhile ``totals()`` gives
    progress, ``stop()`` ends the run early and ``join()`` waits for its end. ``run()`` does
    all of that in one blocking call.
    """

    def __cinit__(self):
        self.e.epfd = -1
        self.e.source_fd = -1

    def __init__(self, fds, *, bint confirmable=True, int code=2, options=(),
                 bytes payload=b"", int ack_timeout_ms=ACK_TIMEOUT_MS,
                 int max_retransmit=MAX_RETRANSMIT, int response_timeout_ms=10000,
                 int nstart=1, int interval_ms=0, bint no_stop=False, int block_size=0,
                 int retry_delay_ms=RETRY_DELAY_MS, int jitter_ms=JITTER_MS,
                 bint observe=False, int reregister=0, int register=0,
                 bint serve_feeds=False, int feed_min_ms=100, int feed_max_ms=100,
                 str transport="udp", str source_first=None, tuple server=None):
        cdef epoll_event event
        cdef int i, fd
        cdef bytes request, base
        cdef bint tcp = transport == "tcp"
        cdef uint64_t seed = int.from_bytes(os.urandom(8), "little") | 1
        if self.e.clients != NULL:
            raise RuntimeError("already initialised")
        fds = list(fds)
        if not 0 < len(fds) <= MAX_CLIENTS:
            raise ValueError(f"number of clients must be in 1..{MAX_CLIENTS}")
        if ack_timeout_ms <= 0 or response_timeout_ms <= 0 or max_retransmit < 0:
            raise ValueError("timeouts must be positive, max_retransmit not negative")
        if not 0 < nstart <= MAX_NSTART:
            raise ValueError(f"nstart must be in 1..{MAX_NSTART}")
        if len(fds) * nstart > MAX_EXCHANGES:
            raise ValueError(f"clients x nstart must be at most {MAX_EXCHANGES}")
        if interval_ms < 0 or retry_delay_ms < 0 or jitter_ms < 0:
            raise ValueError("interval, retry delay and jitter must not be negative")
        if reregister < 0 or register < 0:
            raise ValueError("reregister and register must not be negative")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload larger than {MAX_PAYLOAD} bytes")
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
        if tcp and serve_feeds:
            raise ValueError("reverse mode (the clients' feeds) is not supported over coap+tcp")
        if tcp and register:
            raise ValueError("register (a new token) is not supported over coap+tcp")
        if source_first is not None:
            self._use_sources(fds, tcp, source_first, server)
        if tcp:
            confirmable = False     # no types over TCP: a request waits for its response
        options = list(options)
        if observe:
            options.append((OPTION_OBSERVE, 0))
        if any(number >= OPTION_BLOCK2 for number, _ in options):
            # block options are appended behind the template's options
            raise ValueError(f"options must be below {OPTION_BLOCK2}")
        self.e.early_block2_szx = size_exponent(block_size) if block_size else -1
        self.e.block1_szx = self.e.early_block2_szx if block_size else 6   # 1024 by default
        self.e.payload_blockwise = len(payload) > block_bytes(self.e.block1_szx)
        # the feeds' MAX_MESSAGE_SIZE and PREFERRED_BLOCK_SIZE (Californium: --blocksize)
        self.e.feed_szx = self.e.early_block2_szx if block_size else 6
        base = build_request(confirmable, code, options)
        # Without block-wise the whole request is one template; else it must fit one block.
        request = base if self.e.payload_blockwise else build_request(
            confirmable, code, options, payload)
        # Private copies: the loop patches MID and token into them in place.
        self.e.request = <uint8_t*>malloc(len(request))
        self.e.base = <uint8_t*>malloc(len(base))
        self.e.payload = <uint8_t*>malloc(len(payload) or 1)
        if self.e.request == NULL or self.e.base == NULL or self.e.payload == NULL:
            raise MemoryError()
        memcpy(self.e.request, <const char*>request, len(request))
        self.e.request_length = len(request)
        memcpy(self.e.base, <const char*>base, len(base))
        self.e.base_length = len(base)
        self.e.base_last_option = max([number for number, _ in options], default=0)
        memcpy(self.e.payload, <const char*>payload, len(payload))
        self.e.payload_length = len(payload)
        self.e.transport = TRANSPORT_TCP if tcp else TRANSPORT_UDP
        if tcp:
            # The template as a frame: its header is at most FRAME_ROOM bytes longer.
            self.e.tcp_request = <uint8_t*>malloc(len(request) + FRAME_ROOM)
            self.e.rx_buffer = <uint8_t*>malloc(RX_CAPACITY + READ_SIZE)
            self.e.scratch = <uint8_t*>malloc(RX_CAPACITY + 4)
            if self.e.tcp_request == NULL or self.e.rx_buffer == NULL or self.e.scratch == NULL:
                raise MemoryError()
            self.e.tcp_request_length = frame_from_datagram(
                self.e.request, self.e.request_length, self.e.tcp_request)
            # datagram: 4 header bytes + token + body; frame: its header + token + body
            self.e.tcp_token_offset = self.e.tcp_request_length - self.e.request_length + 4
        self.e.confirmable = confirmable
        self.e.ack_timeout_ns = <uint64_t>ack_timeout_ms * 1000000
        self.e.max_retransmit = max_retransmit
        self.e.response_timeout_ns = <uint64_t>response_timeout_ms * 1000000
        self.e.interval_ns = <uint64_t>interval_ms * 1000000
        self.e.retry_delay_ns = <uint64_t>retry_delay_ms * 1000000
        self.e.jitter_ns = <uint64_t>jitter_ms * 1000000
        self.e.no_stop = no_stop
        self.e.observe = observe
        self.e.reregister = reregister
        self.e.register = register
        self.e.nstart = nstart
        self.e.serve_feeds = serve_feeds
        self.e.feed_min_ms = min(feed_min_ms, feed_max_ms)
        self.e.feed_max_ms = max(feed_min_ms, feed_max_ms)
        self.e.rng = seed
        self.e.clients = <Client*>calloc(len(fds), sizeof(Client))
        self.e.exchanges = <Exchange*>calloc(len(fds) * nstart, sizeof(Exchange))
        if self.e.clients == NULL or self.e.exchanges == NULL:
            raise MemoryError()
        self.e.client_count = len(fds)
        # room for every client's failure and more; beyond that they are only counted
        self.e.errors.capacity = min(2 * len(fds) + 64, 65536)
        self.e.errors.slots = <ErrorEvent*>calloc(self.e.errors.capacity, sizeof(ErrorEvent))
        if self.e.errors.slots == NULL:
            raise MemoryError()
        for i in range(len(fds) * nstart):
            self.e.exchanges[i].client = i // nstart
        self.e.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.e.epfd < 0:
            raise OSError(errno, os.strerror(errno))
        for i, fd in enumerate(fds):
            self.e.clients[i].fd = fd
            # Random start values, like Californium's USE_RANDOM_MID_START.
            self.e.clients[i].mid = next_random(&self.e) & 0xFFFF
            self.e.clients[i].token = <uint32_t>next_random(&self.e)
            if self.e.source_fd >= 0:
                continue    # the shared socket is polled, not in the epoll set
            event.events = EPOLLIN
            event.data.u64 = 0
            event.data.u32 = i
            if epoll_ctl(self.e.epfd, EPOLL_CTL_ADD, fd, &event) < 0:
                raise OSError(errno, os.strerror(errno))

    def _use_sources(self, list fds, bint tcp, str source_first, tuple server):
        cdef uint32_t first
        if tcp:
            raise ValueError("source addresses are for coap over UDP only")
        if len(set(fds)) != 1:
            raise ValueError("with source addresses every client uses the same socket")
        if server is None:
            raise ValueError("source addresses need the server's (IPv4 address, port)")
        first = int(ipaddress.IPv4Address(source_first))
        if int(first) + len(fds) - 1 > 0xFFFFFFFF:
            raise ValueError(f"{len(fds)} addresses from {source_first} overflow IPv4")
        host, port = server
        if not 0 < port < 65536:
            raise ValueError(f"server port must be in 1..65535, not {port}")
        self.e.server.sin_family = AF_INET
        self.e.server.sin_addr.s_addr = htonl(int(ipaddress.IPv4Address(host)))
        self.e.server.sin_port = htons(port)
        # Slots hold a whole datagram: a DTLS record around a message of up to DATAGRAM_SIZE.
        if (source_batch_init(&self.e.source_tx, SOURCE_TX_BATCH, DATAGRAM_SIZE + RECORD_ROOM) < 0
                or source_batch_init(&self.e.source_rx, SOURCE_RX_BATCH,
                                     DATAGRAM_SIZE + RECORD_ROOM) < 0):
            raise MemoryError()
        self.e.source_first = first
        self.e.source_fd = fds[0]

    def __dealloc__(self):
        cdef int i
        if self.e.epfd >= 0:
            close(self.e.epfd)
        source_batch_free(&self.e.source_tx)
        source_batch_free(&self.e.source_rx)
        if self.e.clients != NULL:
            for i in range(self.e.client_count):
                free(self.e.clients[i].rx)
                free(self.e.clients[i].tx)
                if self.e.clients[i].ssl != NULL:
                    SSL_free(<SSL*>self.e.clients[i].ssl)    # the socket stays open
        if self.e.ssl_ctx != NULL:
            SSL_CTX_free(<SSL_CTX*>self.e.ssl_ctx)
        free(self.e.tcp_request)
        free(self.e.rx_buffer)
        free(self.e.scratch)
        free(self.e.clients)
        free(self.e.exchanges)
        free(self.e.handshake_requests.slots)
        free(self.e.handshakes_done.slots)
        free(self.e.errors.slots)
        free(self.e.request)
        free(self.e.base)
        free(self.e.payload)

    @property
    def client_count(self) -> int:
        return self.e.client_count

    @property
    def request(self) -> bytes:
        """The request template as last sent (MID 0 and token 0 before a run; without the
        payload when that goes block-wise)."""
        return self.e.request[:self.e.request_length]

    @property
    def request_frame(self) -> bytes:
        """coap+tcp: the request template as a frame (token 0 before a run); b"" over UDP."""
        if self.e.transport != TRANSPORT_TCP:
            return b""
        return self.e.tcp_request[:self.e.tcp_request_length]

    @property
    def transport(self) -> str:
        return "tcp" if self.e.transport == TRANSPORT_TCP else "udp"

    def start(self, int clients=-1, long long requests=0, double duration=0.0,
              double warmup=0.0, bint stop_on_error=False, long long notifies=0,
              long long reverse=0):
        """Start a run of the first *clients* clients (all if -1) in a worker thread.

        *requests* follows Californium's ``--requests``: per client, overall requests x clients;
        up to 10 each client sends exactly that many, above that they share one down-counter
        (fast clients send more); 0: no limit. *duration* (seconds after the *warmup*; 0: no
        limit) ends the run by time. *notifies* (observe mode): the run ends once that many
        notifications per client arrived overall. *reverse* (reverse mode): the run goes on
        until that many answers and notifications per client were sent for the server's
        requests. ``window()`` covers the time after the warm-up.
        """
        cdef Engine* e = &self.e
        cdef int i
        cdef epoll_event event
        if self._thread is not None:
            raise RuntimeError("generator is already running")
        if clients < 0 or clients > e.client_count:
            clients = e.client_count
        if requests <= 0 and duration <= 0 and notifies <= 0 and reverse <= 0:
            raise ValueError("need a request limit, a notification limit or a duration")
        memset(&e.total, 0, sizeof(Counters))
        memset(&e.connect_latency, 0, sizeof(Histogram))
        memset(&e.success_latency, 0, sizeof(Histogram))
        memset(&e.error_latency, 0, sizeof(Histogram))
        memset(&e.block_latency, 0, sizeof(Histogram))
        e.unlimited = requests <= 0
        e.shared = requests > 10
        e.shared_remaining = <uint64_t>requests * clients if e.shared else 0
        e.notifies_limited = notifies > 0
        e.notifies_remaining = <uint64_t>notifies * clients if notifies > 0 else 0
        e.reverse_limited = reverse > 0
        e.reverse_remaining = <uint64_t>reverse * clients if reverse > 0 else 0
        e.blocks_open = 0
        e.blocks_deadline_ns = 0
        e.observers = 0
        for i in range(e.client_count):
            e.clients[i].remaining = requests if (requests > 0 and not e.shared) else 0
            e.clients[i].started = False
            e.clients[i].stopped = False  # coap+tcp: tcp_start() stops an ended connection's
            e.clients[i].busy = 0
            e.clients[i].completed = 0
            e.clients[i].last_code = 0
            e.clients[i].last_error = 0
            e.clients[i].observed = False
            e.clients[i].notify_pending = False
            e.clients[i].notify_due_ns = 0
            e.clients[i].has_request_mid = False
            e.clients[i].separate_pending = False
            e.clients[i].block_valid[0] = e.clients[i].block_valid[1] = False
            e.clients[i].force_handshake = False
            e.clients[i].reconnected = False
            if e.clients[i].in_handshake:   # parked at the end of the last run: back in
                e.clients[i].in_handshake = False
                if e.source_fd < 0:
                    event.events = EPOLLIN
                    event.data.u64 = 0
                    event.data.u32 = <uint32_t>i
                    epoll_ctl(e.epfd, EPOLL_CTL_ADD, e.clients[i].fd, &event)
        e.handshake_requests.head = e.handshake_requests.tail = 0
        e.handshakes_done.head = e.handshakes_done.tail = 0
        e.errors.head = e.errors.tail = 0
        e.errors.dropped = 0
        for i in range(e.client_count * e.nstart):
            e.exchanges[i].state = IDLE
            e.exchanges[i].deadline_ns = 0
            e.exchanges[i].notifies = 0
        e.run_clients = clients
        e.warmup_ns = <uint64_t>(warmup * 1e9) if warmup > 0 else 0
        e.duration_ns = <uint64_t>(duration * 1e9) if duration > 0 else 0
        e.stop_on_error = stop_on_error
        e.loop_errno = 0
        # Cleared here, in the caller's thread, so that a stop() right after start() counts.
        lg_store(&e.stop, 0)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, name="loadgen", daemon=True)
        self._thread.start()

    def _work(self):
        try:
            with nogil:
                run_loop(&self.e)
        finally:
            self._done.set()

    def join(self, timeout=None) -> bool:
        """Wait up to *timeout* s for the run to end; True when it has ended."""
        if self._thread is None:
            return True
        # Wait on an Event, not on Thread.join(): a join() interrupted by Ctrl-C can mark a
        # still running thread as stopped (CPython gh-90882), and the results would be read
        # while the loop still writes them.
        if not self._done.wait(timeout):
            return False
        self._thread.join()
        self._thread = None
        if self.e.loop_errno:
            raise OSError(self.e.loop_errno, os.strerror(self.e.loop_errno))
        return True

    def run(self, **limits):
        """start() and wait for the end; Ctrl-C stops the run (and is raised again)."""
        self.start(**limits)
        try:
            while not self.join(0.5):
                pass
        except BaseException:
            self.stop()
            self.join()
            raise

    def stop(self):
        """Ask a running loop to finish (returns at once; the loop ends within ~10 ms)."""
        lg_store(&self.e.stop, 1)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def _handshake_rings(self):
        cdef int capacity = self.e.client_count + 1
        if self.e.handshake_requests.slots != NULL:
            return
        self.e.handshake_requests.slots = <int*>calloc(capacity, sizeof(int))
        self.e.handshakes_done.slots = <int*>calloc(capacity, sizeof(int))
        if self.e.handshake_requests.slots == NULL or self.e.handshakes_done.slots == NULL:
            raise MemoryError()
        self.e.handshake_requests.capacity = capacity
        self.e.handshakes_done.capacity = capacity

    def handshakes_every(self, unsigned int responses) -> None:
        """coaps: after every *responses*-th response a client waits for a new DTLS session
        (``take_handshake_requests`` / ``resume``) before its next request; 0: never. Applies
        to the next run (with nstart 1)."""
        if self._thread is not None:
            raise RuntimeError("generator is running")
        if responses:
            self._handshake_rings()
        self.e.handshake_every = responses

    def dtls_recovery(self, bint on=True) -> None:
        """coaps with ``no_stop``: after a failed CON request a client waits for a new DTLS
        session (``take_handshake_requests`` / ``resume``, someone must serve them) before it
        sends again, as Californium forces a full handshake then. Applies to the next run."""
        if self._thread is not None:
            raise RuntimeError("generator is running")
        if on:
            self._handshake_rings()
        self.e.dtls_recovery = on

    def take_handshake_requests(self) -> list:
        """``[(client, after_failure), ...]``: the clients parked for a handshake since the
        last call, *after_failure* for those whose request failed (safe while running)."""
        cdef int value = ring_pop(&self.e.handshake_requests)
        taken = []
        while value >= 0:
            taken.append((value >> 1, bool(value & 1)))
            value = ring_pop(&self.e.handshake_requests)
        return taken

    def take_errors(self) -> tuple:
        """``(events, dropped)``: the failed requests since the last call (safe while running),
        each ``(client, responses so far, code, errno, seconds since the request started,
        failed)`` (code -1 RST, -2 timeout, -3 connection ended; *failed*: the client stopped),
        and how many did not fit the queue."""
        cdef ErrorRing* r = &self.e.errors
        cdef int head = r.head
        cdef ErrorEvent* event
        events = []
        if r.capacity == 0:
            return events, 0
        while head != lg_load(&r.tail):
            event = &r.slots[head]
            events.append((event.client, event.count, event.code, event.err, event.seconds,
                           bool(event.failed)))
            head = (head + 1) % r.capacity
            lg_store(&r.head, head)
        dropped = r.dropped
        return events, dropped

    def connect_times(self, times) -> None:
        """Seconds of each client's handshake before the run (coaps): added to its first
        response's RTT, which Californium's "connects" has with the handshake in it."""
        cdef int i
        times = list(times)
        if len(times) != self.e.client_count:
            raise ValueError(f"{self.e.client_count} times needed, not {len(times)}")
        if self._thread is not None:
            raise RuntimeError("generator is running")
        for i, seconds in enumerate(times):
            self.e.clients[i].connect_ns = <uint64_t>(max(float(seconds), 0.0) * 1e9)

    def feed_intervals(self, int count) -> list:
        """*count* notification intervals (ms) as the feeds draw them (for tests)."""
        if self._thread is not None:
            raise RuntimeError("generator is running")
        return [feed_interval_ms(&self.e) for _ in range(count)]

    def cipher(self, int index):
        """coaps: client *index*'s current AeadCipher."""
        return self._ciphers[index]

    def write_seq(self, int index) -> int:
        """The next record sequence number of a parked client's session (for its
        close_notify before the new handshake)."""
        if not 0 <= index < self.e.client_count or not self.e.clients[index].in_handshake:
            raise ValueError(f"client {index} is not parked for a handshake")
        return self.e.clients[index].write_seq

    def resume(self, int index, session, double handshake_s=0.0) -> None:
        """A parked client goes on with *session* (see ``use_dtls``); *handshake_s*: the
        handshake's duration, part of the next response's "connects" RTT."""
        cdef AeadCipher cipher = session.cipher
        cdef Client* c
        if not 0 <= index < self.e.client_count or not self.e.clients[index].in_handshake:
            raise ValueError(f"client {index} is not parked for a handshake")
        c = &self.e.clients[index]
        self._ciphers[index] = cipher           # the loop does not touch a parked client
        c.cipher = <PyObject*>cipher
        c.write_seq = session.next_write_seq
        c.read_cid_length = len(session.read_cid)
        c.connect_ns = <uint64_t>(max(handshake_s, 0.0) * 1e9)
        if not ring_push(&self.e.handshakes_done, index):
            raise RuntimeError("handshake queue full")

    def use_dtls(self, sessions) -> None:
        """coaps: client i talks through DTLS session ``sessions[i]``, an object with
        ``cipher`` (its epoch-1 AeadCipher), ``next_write_seq`` and ``read_cid`` (as the
        handshake left it); call before the run."""
        cdef int i
        cdef AeadCipher cipher
        if self.e.transport != TRANSPORT_UDP:
            raise ValueError("DTLS sessions need the UDP transport")
        sessions = list(sessions)
        if len(sessions) != self.e.client_count:
            raise ValueError(f"{self.e.client_count} sessions needed, not {len(sessions)}")
        self._ciphers = []
        for i, session in enumerate(sessions):
            cipher = session.cipher
            self._ciphers.append(cipher)        # the reference behind clients[i].cipher
            self.e.clients[i].cipher = <PyObject*>cipher
            self.e.clients[i].write_seq = session.next_write_seq
            self.e.clients[i].read_cid_length = len(session.read_cid)

    def use_tls(self, *, str ca_file=None, bint verify=True, str server_name=None,
                str cert_file=None, str key_file=None) -> None:
        """coaps+tcp (RFC 8323 §4.1): every client talks TLS (1.2 or later, ALPN "coap") on
        its connection; call before ``handshake_tls()``. With *verify* the server's
        certificate must chain to *ca_file* and fit *server_name* (a host name or an IP
        address); *cert_file* (+ *key_file*, default: in *cert_file*) is our certificate for a
        server that asks. ValueError for unusable credentials."""
        cdef SSL_CTX* ctx
        cdef SSL* ssl
        cdef int i
        cdef bytes name
        cdef bint literal = False
        if self.e.transport != TRANSPORT_TCP:
            raise ValueError("TLS needs the tcp transport")
        if self.e.ssl_ctx != NULL:
            raise RuntimeError("TLS is already set up")
        if self._thread is not None:
            raise RuntimeError("generator is running")
        if verify and not ca_file:
            raise ValueError("verifying the server needs a CA file")
        ERR_clear_error()
        ctx = SSL_CTX_new(TLS_client_method())
        if ctx == NULL:
            raise MemoryError()
        self.e.ssl_ctx = ctx
        lg_ctx_options(ctx)
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        if SSL_CTX_set_alpn_protos(ctx, b"\x04coap", 5) != 0:
            raise MemoryError()
        if verify:
            if SSL_CTX_load_verify_locations(ctx, os.fsencode(ca_file), NULL) != 1:
                raise ValueError(f"cannot load the CA certificates {ca_file}: {_tls_reason()}")
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
        else:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL)
        if cert_file:
            if SSL_CTX_use_certificate_chain_file(ctx, os.fsencode(cert_file)) != 1:
                raise ValueError(f"cannot load the certificate {cert_file}: {_tls_reason()}")
            key_file = key_file or cert_file
            if (SSL_CTX_use_PrivateKey_file(ctx, os.fsencode(key_file), SSL_FILETYPE_PEM) != 1
                    or SSL_CTX_check_private_key(ctx) != 1):
                raise ValueError(f"cannot load the private key {key_file}: {_tls_reason()}")
        name = server_name.encode("idna") if server_name else b""
        if server_name:
            try:
                ipaddress.ip_address(server_name)
                literal = True
            except ValueError:
                literal = False
        for i in range(self.e.client_count):
            ssl = SSL_new(ctx)
            if ssl == NULL:
                raise MemoryError()
            self.e.clients[i].ssl = ssl
            self.e.clients[i].tls_ready = False
            if SSL_set_fd(ssl, self.e.clients[i].fd) != 1:
                raise MemoryError()
            SSL_set_connect_state(ssl)
            SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
            if name and not literal:
                SSL_set_tlsext_host_name(ssl, name)     # SNI: host names only (RFC 6066)
            if name and verify:
                if literal:
                    if X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1:
                        raise ValueError(f"bad server address {server_name}")
                elif SSL_set1_host(ssl, name) != 1:
                    raise ValueError(f"bad server name {server_name}")

    def handshake_tls(self, double timeout) -> int:
        """Drive the clients' TLS handshakes (all at once) for up to *timeout* s without the
        GIL; returns how many are still under way (0: all done). ConnectionError (one line)
        when one fails."""
        cdef uint64_t deadline
        cdef int waiting = 0, failed = -1, ssl_error = 0, sys_error = 0, result
        cdef unsigned long lib_error = 0
        if self.e.ssl_ctx == NULL:
            raise RuntimeError("use_tls() first")
        if self._thread is not None:
            raise RuntimeError("generator is running")
        deadline = monotonic_ns() + <uint64_t>(max(timeout, 0.0) * 1e9)
        with nogil:
            result = tls_handshakes(&self.e, deadline, &waiting, &failed, &ssl_error,
                                    &sys_error, &lib_error)
        if result < 0:
            raise OSError(sys_error, os.strerror(sys_error))
        if result > 0:
            raise ConnectionError(f"TLS handshake of client {failed} failed: "
                                  f"{self._tls_failure(failed, ssl_error, sys_error, lib_error)}")
        return waiting

    cdef str _tls_failure(self, int index, int ssl_error, int sys_error,
                          unsigned long lib_error):
        cdef long verified
        if ssl_error == SSL_ERROR_SSL:
            verified = SSL_get_verify_result(<SSL*>self.e.clients[index].ssl)
            if verified != X509_V_OK:
                return ("server certificate not accepted: "
                        + X509_verify_cert_error_string(verified).decode(errors="replace"))
            reason = _tls_reason(lib_error)
            if reason in ("wrong version number", "packet length too long"):
                reason += " (no CoAP-over-TLS server on that port?)"
            return reason
        if ssl_error == SSL_ERROR_SYSCALL and sys_error:
            reason = os.strerror(sys_error).lower()
            if sys_error == ECONNRESET:
                reason += " (no CoAP-over-TLS server on that port?)"
            return reason
        return "the server closed the connection (no CoAP-over-TLS server on that port?)"

    def tls_alpn(self, int index) -> bytes:
        """coaps+tcp: the protocol the server chose for client *index* (b"": none)."""
        cdef const unsigned char* data = NULL
        cdef unsigned int length = 0
        if not 0 <= index < self.e.client_count:
            raise IndexError(index)
        if self.e.clients[index].ssl == NULL:
            return b""
        SSL_get0_alpn_selected(<SSL*>self.e.clients[index].ssl, &data, &length)
        return data[:length] if data != NULL else b""

    def shutdown_tls(self) -> None:
        """coaps+tcp, after the runs: a close_notify on every open connection (best effort,
        without waiting for the server's)."""
        cdef int i
        cdef Client* c
        if self.running:
            return
        for i in range(self.e.client_count):
            c = &self.e.clients[i]
            if c.ssl != NULL and c.tls_ready and not c.closed:
                ERR_clear_error()
                SSL_shutdown(<SSL*>c.ssl)
        ERR_clear_error()

    def totals(self) -> dict:
        """Counters since the start of the run, plus active and pending clients, and the
        requests and notifications still to come (-1: no limit).

        Safe to call while the loop runs: each value is read atomically, the set is not
        a consistent snapshot (good enough for progress lines).
        """
        cdef Counters zero
        memset(&zero, 0, sizeof(Counters))
        result = _counters(&self.e.total, &zero)
        result["active"] = self.e.active
        result["pending"] = self.e.pending
        result["notifies_remaining"] = (
            self.e.notifies_remaining if self.e.notifies_limited else -1)
        result["reverse_remaining"] = (
            self.e.reverse_remaining if self.e.reverse_limited else -1)
        result["observers"] = self.e.observers
        return result

    def window(self) -> dict:
        """Counters, duration, process CPU and latency of the measurement window (after a run)."""
        result = _counters(&self.e.total, &self.e.window_base)
        result["duration"] = (self.e.window_end_ns - self.e.window_start_ns) / 1e9
        result["cpu"] = (self.e.window_cpu_end_ns - self.e.window_cpu_start_ns) / 1e9
        result["connect_latency_us"] = _latency(&self.e.connect_latency)
        result["success_latency_us"] = _latency(&self.e.success_latency)
        result["error_latency_us"] = _latency(&self.e.error_latency)
        result["block_latency_us"] = _latency(&self.e.block_latency)
        return result

    def latency_histogram(self, str kind="success") -> list:
        """Non-empty buckets [(upper limit in us, count), ...] of the window's *kind* latency
        (connect, success, error or block) (after a run)."""
        cdef Histogram* h
        if kind == "connect":
            h = &self.e.connect_latency
        elif kind == "success":
            h = &self.e.success_latency
        elif kind == "error":
            h = &self.e.error_latency
        elif kind == "block":
            h = &self.e.block_latency
        else:
            raise ValueError(f"unknown latency kind {kind!r}")
        return _buckets(h)

    def client_requests(self) -> list:
        """Responses per client in the last run (Californium's per-client request count)."""
        return [self.e.clients[i].completed for i in range(self.e.run_clients)]

    def client(self, int index) -> dict:
        """State of one client: last response code (-1 RST, -2 timeout, -3 coap+tcp connection
        ended), last socket errno."""
        if not 0 <= index < self.e.client_count:
            raise IndexError(index)
        cdef Client* c = &self.e.clients[index]
        cdef Exchange* x = &self.e.exchanges[index * self.e.nstart]
        return {
            "state": x.state,
            "stopped": c.stopped,
            "completed": c.completed,
            "last_code": c.last_code,
            "last_error": c.last_error,
            "mid": c.mid,
            "token": c.token,
            "closed": c.closed,
            "released": c.released,
            "peer_max_message_size": c.peer_max_message_size,
            "tls": c.ssl != NULL,
        }

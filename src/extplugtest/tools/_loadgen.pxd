# Closed-loop CoAP load generator, C level (see _loadgen.pyx).
#
# One Engine drives N emulated clients. Each client owns a connected UDP socket (or, with
# source addresses, its own address on one shared socket) and has up to
# nstart requests outstanding (one Exchange each); the Engine's loop runs without the GIL in a
# worker thread. coap+tcp (RFC 8323): one connected TCP socket per client instead, with a
# receive buffer for partial frames and a send buffer for what the socket did not take;
# coaps+tcp: the same over one TLS connection (OpenSSL's SSL) per client.

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "source_batch.h" nogil:
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    ctypedef struct source_batch:
        int capacity
        int count
    int source_batch_init(source_batch* b, int capacity, int slot_size)
    void source_batch_free(source_batch* b)
    uint8_t* source_batch_buffer(source_batch* b, int i)
    void source_batch_queue(source_batch* b, size_t length, const sockaddr_in* to,
                            uint32_t source)
    uint32_t source_batch_queued_source(source_batch* b, int i)
    int source_batch_send(int fd, source_batch* b, int* failed_slots, int* failed_errnos)
    int source_batch_recv(int fd, source_batch* b)
    unsigned int source_batch_length(source_batch* b, int i)
    const sockaddr_in* source_batch_peer(source_batch* b, int i)
    uint32_t source_batch_local(source_batch* b, int i)

cdef enum:
    TOKEN_LENGTH = 4
    # Latency histogram: values below 2**SUB_BITS us are exact, above that every power of two
    # is split into 2**(SUB_BITS - 1) buckets (at most 1.6 % relative error). 2**38 us (~76 h)
    # is far beyond any request lifetime, so nothing is clipped in practice.
    SUB_BITS = 7
    MAX_VALUE_BITS = 38
    BUCKETS = (MAX_VALUE_BITS - SUB_BITS + 1) * (1 << (SUB_BITS - 1)) + (1 << (SUB_BITS - 1))

cdef enum ExchangeState:
    IDLE = 0            # nothing to do: not started yet, out of requests, or client stopped
    WAIT_ACK = 1        # CON sent, retransmitting until an ACK (or the response) arrives
    WAIT_RESPONSE = 2   # NON sent, or empty ACK received: waiting for the response
    WAIT_DELAY = 3      # the next request (after --interval, or a retry) is due at deadline_ns
    OBSERVING = 4       # observe mode: registered, counting notifications
    WAIT_HANDSHAKE = 5  # coaps: parked while Python runs a new DTLS handshake for the client

cdef enum Transport:
    TRANSPORT_UDP = 0   # coap, and coaps with a per-client cipher
    TRANSPORT_TCP = 1   # coap+tcp (RFC 8323): frames on a byte stream, no type, no MID

cdef struct Exchange:
    int client              # index of the owning client
    uint8_t state
    uint8_t retransmits
    uint8_t block1_szx      # Block1 size exponent (the server may ask for smaller blocks)
    uint8_t block2_szx      # Block2 size exponent asked for
    bint blockwise          # built per transmission (block options), not from the template
    uint16_t mid
    uint32_t token
    uint32_t block1_offset  # payload offset of the Block1 block in flight
    uint32_t block2_num     # Block2 number asked for (0: the first block)
    uint32_t notifies       # observe mode: notifications of this client's relation
    uint64_t started_ns     # first transmission of the request (application RTT)
    uint64_t sent_ns        # latest transmission (block or retransmission): transmission RTT
    uint64_t timeout_ns     # current retransmission timeout (doubles on every retransmission)
    uint64_t deadline_ns    # next retransmission, response timeout or delayed start; 0: none

cdef struct FeedReply:
    # An answer of a feed, enough to build it again byte for byte (retransmissions, duplicates,
    # further blocks): "hello <client> feed-<counter>" resized to rlen, or an empty ACK.
    uint64_t counter
    uint32_t observe        # Observe value, if observing
    uint32_t num            # Block2 NUM, if blockwise
    uint16_t mid
    uint16_t rlen
    uint8_t type
    uint8_t code            # 2.05; 0: an empty ACK (the response follows separately)
    uint8_t szx
    uint8_t token_length
    uint8_t token[8]
    bint observing          # carries Observe
    bint blockwise          # carries Block2

cdef struct Client:
    int fd
    # coaps: the DTLS session's AeadCipher (LoadGenerator holds the reference), NULL for coap
    PyObject* cipher
    uint64_t write_seq      # next record sequence number of epoch 1
    uint8_t read_cid_length  # our CID on the server's records (RFC 9146), 0: none
    bint in_handshake       # coaps: parked (socket out of the epoll set) for a handshake
    bint force_handshake    # coaps: a CON request failed, a new full handshake comes first
    bint reconnected        # the next response follows a handshake: it counts as a "connect"
    uint64_t connect_ns     # duration of the client's last handshake, added to that response
    bint started            # has received a response (Californium's "pending" until then)
    bint stopped            # stopped after a failure (Californium's default, without --no-stop)
    bint has_acked_mid
    uint16_t mid            # last MID used
    uint16_t acked_mid      # MID of the last separate CON response we acknowledged
    uint32_t token          # last token used
    int busy                # exchanges not IDLE
    int64_t remaining       # requests left for this client (per-client budget)
    uint32_t completed      # responses received in this run (Californium's requestsCounter)
    int last_code           # code of the last response, -1 RST, -2 timeout, 0 if none
    int last_error          # errno of the last socket error, 0 if none
    # reverse mode: the client's feed-CON/feed-NON resources (Californium's Feed)
    bint has_request_mid
    FeedReply request_reply     # our answer to the server's last CON request (duplicates)
    bint observed               # the server observes one of our feeds
    bint observed_con           # feed-CON: CON notifications
    bint observer_block2        # the registration asked for Block2 (early negotiation)
    uint8_t observer_szx        # Block2 size of the notifications
    uint8_t observer_token_length
    uint8_t observer_token[8]
    uint16_t observer_rlen
    uint32_t observe_sequence
    uint64_t notify_due_ns      # next notification; 0: none (or after the pending one's ACK)
    bint notify_pending         # a CON notification waits for its ACK
    FeedReply notify            # the last notification (a retransmission repeats it)
    uint8_t notify_retransmits
    uint64_t notify_timeout_ns
    uint64_t notify_resend_ns
    uint32_t notify_after_ms    # the next one is due that long after this one's ACK
    bint separate_pending       # a separate CON response (?ack) waits for its ACK
    FeedReply separate
    uint8_t separate_retransmits
    uint64_t separate_timeout_ns
    uint64_t separate_resend_ns
    # Block2 status per feed (0 feed-NON, 1 feed-CON): the representation whose further
    # blocks the server may fetch (Californium's Block2BlockwiseStatus, until the last block)
    bint block_valid[2]
    uint16_t block_rlen[2]
    uint64_t block_counter[2]
    # coap+tcp
    bint closed             # the connection ended (FIN, error, Abort): for good
    bint released           # the server sent Release: no new requests on this connection
    bint csm_sent
    bint want_write         # EPOLLOUT is on: tx holds bytes the socket did not take
    uint8_t* rx             # an incomplete frame kept for the next read (allocated on demand)
    Py_ssize_t rx_length
    uint8_t* tx             # unsent bytes (allocated on demand, bounded)
    Py_ssize_t tx_length
    uint32_t peer_max_message_size  # from the server's CSM, 0: none received
    # coaps+tcp: the connection's SSL (an SSL*, NULL for plain coap+tcp), owned by the engine
    void* ssl
    bint tls_ready          # its handshake has completed

cdef struct Counters:
    uint64_t sent               # new requests (first transmission of their first message)
    uint64_t transmissions      # first transmissions of every message (each block counts)
    uint64_t retransmissions
    uint64_t blocks             # follow-up block requests (Block1 continue, Block2 next)
    uint64_t success            # 2.xx responses
    uint64_t error_responses    # any other response code (5.03 included)
    uint64_t unavailable        # 5.03 responses
    uint64_t timeouts           # CON exchange gave up, or NON/separate response timed out
    uint64_t rejects            # RST for our request
    uint64_t transmission_errors  # timeouts + rejects, + error responses with --no-stop
    uint64_t retried            # failed requests given back to the budget and retried
    uint64_t stopped_clients    # clients stopped by a failure
    uint64_t notifies           # observe mode: notifications received
    uint64_t reverse_responses  # reverse mode: answers to the server's requests + notifications
    uint64_t feed_notifies      # reverse mode: notifications sent
    uint64_t feed_registrations  # reverse mode: observe registrations received
    # reverse mode: CON notifications (or separate responses) never acknowledged
    uint64_t feed_failures
    uint64_t feed_separate      # reverse mode: separate responses (?ack: empty ACK first)
    uint64_t feed_blocks        # reverse mode: further Block2 blocks served (NUM > 0)
    uint64_t feed_errors        # reverse mode: error answers (4.02, 4.04, 4.05, 4.06)
    uint64_t socket_errors      # failed send/recv (ICMP errors, full buffers)
    uint64_t ignored            # datagrams that matched nothing
    uint64_t dtls_dropped       # coaps: records that did not open (replays, bad MACs, alerts)
    uint64_t connections_closed  # coap+tcp: connections ended by the server (FIN, error, Abort)
    uint64_t csm_received       # coap+tcp: the server's CSMs (7.01)
    uint64_t pings              # coap+tcp: Pings (7.02) answered with a Pong
    uint64_t releases           # coap+tcp: Releases (7.04) received
    uint64_t aborts             # coap+tcp: Aborts (7.05) received
    uint64_t protocol_errors    # coap+tcp: malformed or oversized frames (we Abort and close)

cdef struct Histogram:
    uint64_t count
    uint64_t sum_us
    uint64_t max_us
    uint64_t buckets[BUCKETS]

cdef struct Ring:
    # A single-producer single-consumer queue of client indexes between the loop thread and
    # the Python thread (head and tail accessed atomically).
    int* slots
    int capacity
    int head
    int tail

cdef struct ErrorEvent:
    # A failed request (Californium's per-client "Error after ..." / "failed after ..." lines)
    int client
    uint32_t count          # the client's responses so far
    int code                # -1 RST, -2 timeout, -3 coap+tcp connection ended
    int err                 # errno of an ended connection, 0 if none
    uint32_t seconds        # since the request was started (a timeout's "timeout (Ns)")
    bint failed             # the client stopped (without --no-stop)

cdef struct ErrorRing:
    # single producer (the loop) single consumer (Python), as Ring; full: counted in dropped
    ErrorEvent* slots
    int capacity
    int head
    int tail
    uint64_t dropped

cdef struct Engine:
    Client* clients
    Exchange* exchanges         # client_count * nstart, client i owns [i*nstart, (i+1)*nstart)
    # coaps --handshakes-full/-close: every n-th response parks the client, Python handshakes
    uint32_t handshake_every    # 0: never
    Ring handshake_requests     # loop -> Python: clients waiting for a handshake
    Ring handshakes_done        # Python -> loop: clients with a new session
    bint dtls_recovery          # coaps: a failed CON request parks its client for a handshake
    ErrorRing errors            # loop -> Python: failed requests, for the per-client lines
    int client_count
    int nstart
    int active                  # clients not stopped with something to do
    int pending                 # active clients without a response yet
    int epfd
    # --source-addresses: one unconnected IPv4 socket for all clients, each client with its
    # own local address (csrc/source_batch.h); -1: every client has its own connected socket
    int source_fd
    uint32_t source_first       # the first client's address, host byte order
    sockaddr_in server          # where requests go, and the only peer answers come from
    source_batch source_tx      # datagrams queued for the next sendmmsg
    source_batch source_rx
    uint8_t transport           # Transport
    uint8_t* tcp_request        # coap+tcp: the template as a frame, the token patched in
    Py_ssize_t tcp_request_length
    Py_ssize_t tcp_token_offset
    uint8_t* rx_buffer          # coap+tcp: one read, after the client's kept incomplete frame
    uint8_t* scratch            # coap+tcp: a frame rewritten as a datagram for parse_view
    void* ssl_ctx               # coaps+tcp: the SSL_CTX* of every client's SSL, NULL: none
    uint8_t* request            # template: MID and token are patched in per transmission
    Py_ssize_t request_length
    uint8_t* base               # template without payload, for block-wise transmissions
    Py_ssize_t base_length
    uint16_t base_last_option
    uint8_t* payload
    Py_ssize_t payload_length
    int early_block2_szx        # -1: no Block2 in the first request (no --blocksize)
    int block1_szx              # block size exponent for payloads larger than one block
    bint payload_blockwise      # payload_length > block size: Block1 transfer
    bint confirmable
    uint64_t ack_timeout_ns
    int max_retransmit
    uint64_t response_timeout_ns
    uint64_t interval_ns        # pause after a response before the client's next request
    uint64_t retry_delay_ns     # pause before a retry after a failure (Californium: 1 s)
    uint64_t jitter_ns          # random extra on every pause (Californium: 0..499 ms)
    bint no_stop                # --no-stop: a failed CON request is retried, not the end
    bint observe                # observe mode: requests register, notifications are counted
    uint32_t reregister         # observe: re-register (same token) every n notifications
    uint32_t register           # observe: register anew (new token) every n notifications
    bint notifies_limited
    uint64_t notifies_remaining  # observe: notifications still expected overall
    bint serve_feeds            # reverse mode: answer requests for feed-CON/feed-NON
    bint reverse_limited
    uint64_t reverse_remaining  # reverse responses still expected overall
    uint32_t blocks_open        # feeds whose Block2 representation the server still fetches
    uint64_t blocks_deadline_ns  # the run waits for them until then (0: not counted down yet)
    int64_t feed_min_ms         # notification interval; <= 0: after the previous completed
    int64_t feed_max_ms
    int observers               # feeds observed right now
    uint64_t feed_started       # Feed.started: representations made, over all clients
    int feed_szx                # Block2 size of the feeds' answers (--blocksize, else 1024)
    bint shared                 # use shared_remaining instead of per-client counters
    uint64_t shared_remaining
    bint unlimited              # no request limit (run until the deadline)
    int run_clients             # this run drives clients[0:run_clients]
    bint stop_on_error
    int stop                    # set from another thread: finish the loop
    int loop_errno
    uint64_t rng
    uint64_t warmup_ns
    uint64_t duration_ns        # 0: no time limit
    uint64_t started_ns
    uint64_t end_ns
    uint64_t window_open_ns     # when the measurement window opens (end of warm-up)
    bint window_is_open
    uint64_t window_start_ns
    uint64_t window_end_ns
    uint64_t window_cpu_start_ns
    uint64_t window_cpu_end_ns
    Counters total
    Counters window_base        # total at the start of the window
    Histogram connect_latency   # the first response of each client
    Histogram success_latency
    Histogram error_latency
    Histogram block_latency     # transmission RTT where it differs (Californium's single-blocks)


cdef class LoadGenerator:
    cdef Engine e
    cdef list _ciphers          # coaps: the sessions' AeadCiphers, alive while the engine is
    cdef object _thread
    cdef object _done
    cdef str _tls_failure(self, int index, int ssl_error, int sys_error,
                          unsigned long lib_error)

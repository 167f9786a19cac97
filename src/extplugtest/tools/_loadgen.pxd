# Closed-loop CoAP load generator, C level (see _loadgen.pyx).
#
# One Engine drives N emulated clients. Each client owns a connected UDP socket and has at most
# one request outstanding; the Engine's loop runs without the GIL in a worker thread.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef enum:
    TOKEN_LENGTH = 4
    # Latency histogram: values below 2**SUB_BITS us are exact, above that every power of two
    # is split into 2**(SUB_BITS - 1) buckets (at most 1.6 % relative error). 2**38 us (~76 h)
    # is far beyond any request lifetime, so nothing is clipped in practice.
    SUB_BITS = 7
    MAX_VALUE_BITS = 38
    BUCKETS = (MAX_VALUE_BITS - SUB_BITS + 1) * (1 << (SUB_BITS - 1)) + (1 << (SUB_BITS - 1))

cdef enum ClientState:
    IDLE = 0            # nothing outstanding: not started yet, or out of requests
    WAIT_ACK = 1        # CON sent, retransmitting until an ACK (or the response) arrives
    WAIT_RESPONSE = 2   # NON sent, or empty ACK received: waiting for the response

cdef struct Client:
    int fd
    uint8_t state
    uint8_t retransmits
    bint started            # has completed at least one request (Californium's "pending")
    bint has_acked_mid
    uint16_t mid
    uint16_t acked_mid      # MID of the last separate CON response we acknowledged
    uint32_t token
    int64_t remaining       # requests left for this client; -1: use the shared down-counter
    uint64_t sent_ns        # first transmission of the outstanding request
    uint64_t timeout_ns     # current retransmission timeout (doubles on every retransmission)
    uint64_t deadline_ns    # next retransmission or response timeout; 0: no timer
    int last_code           # code of the last response, 0 if none
    int last_error          # errno of the last socket error, 0 if none

cdef struct Counters:
    uint64_t sent               # new requests (first transmissions)
    uint64_t retransmissions
    uint64_t success            # 2.xx responses
    uint64_t error_responses    # any other response code
    uint64_t timeouts           # CON exchange gave up, or NON/separate response timed out
    uint64_t rejects            # RST for our request
    uint64_t socket_errors      # failed send/recv (ICMP errors, full buffers)
    uint64_t ignored            # datagrams that matched nothing

cdef struct Histogram:
    uint64_t count
    uint64_t sum_us
    uint64_t max_us
    uint64_t buckets[BUCKETS]

cdef struct Engine:
    Client* clients
    int client_count
    int active                  # clients with a request outstanding
    int pending                 # active clients without a completed request yet
    int epfd
    uint8_t* request            # template: MID and token are patched in per transmission
    Py_ssize_t request_length
    bint confirmable
    uint64_t ack_timeout_ns
    int max_retransmit
    uint64_t response_timeout_ns
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
    Histogram success_latency
    Histogram error_latency


cdef class LoadGenerator:
    cdef Engine e
    cdef object _thread
    cdef object _done

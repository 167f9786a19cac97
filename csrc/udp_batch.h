/* Batched UDP I/O with recvmmsg/sendmmsg (Linux).
 *
 * One batch is a fixed array of datagram slots, each with its own buffer and peer address.
 * The receive side fills up to `capacity` slots per system call; the send side queues
 * datagrams into slots and flushes them with one sendmmsg. This is what lets the server do
 * one Python->C crossing and two system calls per batch instead of per datagram.
 */
#ifndef EXTPLUGTEST_UDP_BATCH_H
#define EXTPLUGTEST_UDP_BATCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

typedef struct {
    int capacity;
    int slot_size;
    int count;                      /* send side: queued datagrams */
    struct mmsghdr *msgs;
    struct iovec *iov;
    struct sockaddr_storage *addrs;
    unsigned char *buffers;
} udp_batch;

static int udp_batch_init(udp_batch *b, int capacity, int slot_size)
{
    memset(b, 0, sizeof(*b));
    b->msgs = calloc((size_t)capacity, sizeof(struct mmsghdr));
    b->iov = calloc((size_t)capacity, sizeof(struct iovec));
    b->addrs = calloc((size_t)capacity, sizeof(struct sockaddr_storage));
    b->buffers = malloc((size_t)capacity * (size_t)slot_size);
    if (!b->msgs || !b->iov || !b->addrs || !b->buffers) {
        free(b->msgs); free(b->iov); free(b->addrs); free(b->buffers);
        memset(b, 0, sizeof(*b));
        return -1;
    }
    b->capacity = capacity;
    b->slot_size = slot_size;
    for (int i = 0; i < capacity; i++) {
        b->iov[i].iov_base = b->buffers + (size_t)i * (size_t)slot_size;
        b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
        b->msgs[i].msg_hdr.msg_name = &b->addrs[i];
    }
    return 0;
}

static void udp_batch_free(udp_batch *b)
{
    free(b->msgs); free(b->iov); free(b->addrs); free(b->buffers);
    memset(b, 0, sizeof(*b));
}

static inline unsigned char *udp_batch_buffer(udp_batch *b, int i)
{
    return b->buffers + (size_t)i * (size_t)b->slot_size;
}

/* Accessors of one slot (received: length and source; queued: length and destination). */
static inline unsigned int udp_batch_length(udp_batch *b, int i) { return b->msgs[i].msg_len; }
static inline struct sockaddr_storage *udp_batch_addr(udp_batch *b, int i) { return &b->addrs[i]; }
static inline unsigned int udp_batch_addrlen(udp_batch *b, int i)
{
    return b->msgs[i].msg_hdr.msg_namelen;
}
static inline size_t udp_batch_queued_length(udp_batch *b, int i) { return b->iov[i].iov_len; }

/* Receive up to capacity datagrams without blocking: count, 0 when none, -errno on error. */
static int udp_batch_recv(int fd, udp_batch *b)
{
    for (int i = 0; i < b->capacity; i++) {
        b->iov[i].iov_len = (size_t)b->slot_size;
        b->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        b->msgs[i].msg_hdr.msg_flags = 0;
        b->msgs[i].msg_hdr.msg_control = NULL;
        b->msgs[i].msg_hdr.msg_controllen = 0;
    }
    int n = recvmmsg(fd, b->msgs, (unsigned int)b->capacity, MSG_DONTWAIT, NULL);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno;
    return n;
}

static inline int udp_batch_truncated(udp_batch *b, int i)
{
    return (b->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
}

/* Put one datagram into receive slot i, as if recvmmsg had delivered it (DTLS plaintext). */
static inline void udp_batch_set(udp_batch *b, int i, const unsigned char *data, size_t length,
                                 const struct sockaddr_storage *addr, socklen_t addrlen)
{
    memcpy(udp_batch_buffer(b, i), data, length);
    b->msgs[i].msg_len = (unsigned int)length;
    b->msgs[i].msg_hdr.msg_flags = 0;
    memcpy(&b->addrs[i], addr, addrlen);
    b->msgs[i].msg_hdr.msg_namelen = addrlen;
}

/* The datagram in receive slot i now has `length` bytes (it was rewritten in place, e.g. the
 * plaintext of a DTLS record moved to the start of the slot). */
static inline void udp_batch_set_length(udp_batch *b, int i, size_t length)
{
    b->msgs[i].msg_len = (unsigned int)length;
}

/* The queued datagram in slot i now has `length` bytes (it grew, or lost a header). */
static inline void udp_batch_set_queued_length(udp_batch *b, int i, size_t length)
{
    b->iov[i].iov_len = length;
}

/* Queue the datagram in slot b->count (its buffer already filled) to address addr. */
static inline void udp_batch_queue(udp_batch *b, size_t length, const struct sockaddr_storage *addr,
                                   socklen_t addrlen)
{
    int i = b->count++;
    b->iov[i].iov_len = length;
    memcpy(&b->addrs[i], addr, addrlen);
    b->msgs[i].msg_hdr.msg_namelen = addrlen;
    b->msgs[i].msg_hdr.msg_control = NULL;
    b->msgs[i].msg_hdr.msg_controllen = 0;
}

/* Send all queued datagrams; returns how many could not be sent (the batch is emptied). */
static int udp_batch_send(int fd, udp_batch *b)
{
    int sent = 0, failed = 0;
    while (sent + failed < b->count) {
        int n = sendmmsg(fd, b->msgs + sent + failed, (unsigned int)(b->count - sent - failed),
                         MSG_DONTWAIT);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            failed++;           /* skip the datagram the kernel refused, try the rest */
            continue;
        }
        sent += n;
    }
    b->count = 0;
    return failed;
}

/* Send one datagram now, without blocking; -1 on error. */
static inline ssize_t udp_send_one(int fd, const void *data, size_t length,
                                   const struct sockaddr_storage *addr, socklen_t addrlen)
{
    return sendto(fd, data, length, MSG_DONTWAIT, (const struct sockaddr *)addr, addrlen);
}

static inline double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif

/* Batched UDP I/O of one unconnected IPv4 socket on behalf of many local addresses (Linux).
 *
 * The load generator's `--source-addresses` mode: every emulated client has its own source
 * address (all with the socket's port), chosen per datagram with an IP_PKTINFO control
 * message (ip(7): ipi_spec_dst), and a received datagram names its client by the address it
 * was sent to (ipi_addr). One sendmmsg and one recvmmsg then serve a whole batch of clients,
 * where a socket per client costs a send, a recv and an epoll event per request.
 */
#ifndef EXTPLUGTEST_SOURCE_BATCH_H
#define EXTPLUGTEST_SOURCE_BATCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "udp_batch.h"

typedef union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(struct in_pktinfo))];
} source_control;

/* A udp_batch (slots, buffers, peer addresses) with an IP_PKTINFO control message per slot. */
typedef struct {
    udp_batch slots;
    int capacity;
    int count;                      /* send side: queued datagrams */
    source_control *controls;
} source_batch;

static int source_batch_init(source_batch *b, int capacity, int slot_size)
{
    memset(b, 0, sizeof(*b));
    if (udp_batch_init(&b->slots, capacity, slot_size) < 0)
        return -1;
    b->controls = calloc((size_t)capacity, sizeof(source_control));
    if (!b->controls) {
        udp_batch_free(&b->slots);
        return -1;
    }
    b->capacity = capacity;
    /* Every slot's control message is an IP_PKTINFO; sending only sets its address, a receive
     * overwrites it. */
    for (int i = 0; i < capacity; i++) {
        struct msghdr *h = &b->slots.msgs[i].msg_hdr;
        struct cmsghdr *c;
        h->msg_control = b->controls[i].bytes;
        h->msg_controllen = sizeof(source_control);
        c = CMSG_FIRSTHDR(h);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
    }
    return 0;
}

static void source_batch_free(source_batch *b)
{
    udp_batch_free(&b->slots);
    free(b->controls);
    memset(b, 0, sizeof(*b));
}

static inline unsigned char *source_batch_buffer(source_batch *b, int i)
{
    return udp_batch_buffer(&b->slots, i);
}

static inline struct in_pktinfo *source_batch_info(source_batch *b, int i)
{
    return (struct in_pktinfo *)CMSG_DATA((struct cmsghdr *)b->controls[i].bytes);
}

/* Queue the datagram in slot b->count (its buffer already filled): from local address
 * `source` to `to` (both in network byte order). */
static inline void source_batch_queue(source_batch *b, size_t length, const struct sockaddr_in *to,
                                      uint32_t source)
{
    int i = b->count++;
    b->slots.iov[i].iov_len = length;
    memcpy(&b->slots.addrs[i], to, sizeof(*to));
    b->slots.msgs[i].msg_hdr.msg_namelen = sizeof(*to);
    source_batch_info(b, i)->ipi_spec_dst.s_addr = source;
}

/* The source address (network byte order) of queued slot i. */
static inline uint32_t source_batch_queued_source(source_batch *b, int i)
{
    return source_batch_info(b, i)->ipi_spec_dst.s_addr;
}

/* Send all queued datagrams (the batch is emptied). Returns how many the kernel refused; the
 * refused slots' indexes and errnos go to failed_slots / failed_errnos (capacity entries). */
static int source_batch_send(int fd, source_batch *b, int *failed_slots, int *failed_errnos)
{
    int done = 0, failed = 0;
    while (done < b->count) {
        int n = sendmmsg(fd, b->slots.msgs + done, (unsigned int)(b->count - done), MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            failed_slots[failed] = done;
            failed_errnos[failed] = n < 0 ? errno : EAGAIN;
            failed++;
            done++;             /* skip the datagram the kernel refused, try the rest */
            continue;
        }
        done += n;
    }
    b->count = 0;
    return failed;
}

/* Receive up to capacity datagrams without blocking: count, 0 when none, -errno on error. */
static int source_batch_recv(int fd, source_batch *b)
{
    for (int i = 0; i < b->capacity; i++) {
        b->slots.iov[i].iov_len = (size_t)b->slots.slot_size;
        b->slots.msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        b->slots.msgs[i].msg_hdr.msg_controllen = sizeof(source_control);
        b->slots.msgs[i].msg_hdr.msg_flags = 0;
    }
    int n = recvmmsg(fd, b->slots.msgs, (unsigned int)b->capacity, MSG_DONTWAIT, NULL);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno;
    return n;
}

static inline unsigned int source_batch_length(source_batch *b, int i)
{
    return udp_batch_length(&b->slots, i);
}

static inline const struct sockaddr_in *source_batch_peer(source_batch *b, int i)
{
    return (const struct sockaddr_in *)udp_batch_addr(&b->slots, i);
}

/* The local address (network byte order) received slot i was sent to; 0 if the kernel gave
 * no IP_PKTINFO (the socket option is off). */
static inline uint32_t source_batch_local(source_batch *b, int i)
{
    struct msghdr *h = &b->slots.msgs[i].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            return info.ipi_addr.s_addr;
        }
    }
    return 0;
}

#endif

/* A minimal io_uring for stream sockets (Linux 6.0+): multishot receives into a ring of
 * provided buffers, sends, cancels.
 *
 * Why: a CoAP-over-TCP server answering small requests spends most of its time in the kernel,
 * and with epoll every request costs three system calls (a share of epoll_wait, recv, send) at
 * about 0.2 us each on a mitigated VM. With io_uring a receive stays armed per connection
 * (IORING_RECV_MULTISHOT) and lands in a buffer the kernel picks from our buffer ring, and the
 * sends of one round of completions are submitted together: one io_uring_enter per round.
 *
 * The kernel ABI is declared here (prefix xr_) instead of taken from <linux/io_uring.h>, so
 * that the build does not depend on the headers of the build host (manylinux images carry old
 * ones); where the system header is new enough the layouts are checked against it.
 * Memory ordering follows the kernel's io_uring documentation: the consumer loads the
 * producer's tail with acquire and publishes its head with release, and the other way round.
 */
#ifndef EXTPLUGTEST_IO_RING_H
#define EXTPLUGTEST_IO_RING_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup          /* the same numbers on every architecture since 5.1 */
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

struct xr_sqe {                      /* struct io_uring_sqe */
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;
    uint64_t addr;
    uint32_t len;
    uint32_t op_flags;               /* msg_flags, cancel_flags, ... */
    uint64_t user_data;
    uint16_t buf_group;
    uint16_t personality;
    int32_t file_index;
    uint64_t addr3;
    uint64_t pad;
};

struct xr_cqe {                      /* struct io_uring_cqe */
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

struct xr_offsets {                  /* io_sqring_offsets and io_cqring_offsets */
    uint32_t head, tail, ring_mask, ring_entries, flags_or_overflow, dropped_or_cqes;
    uint32_t array_or_flags, resv1;
    uint64_t user_addr;
};

struct xr_params {                   /* struct io_uring_params */
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
    uint32_t resv[3];
    struct xr_offsets sq_off;        /* flags_or_overflow = flags, dropped_or_cqes = dropped,
                                        array_or_flags = array */
    struct xr_offsets cq_off;        /* flags_or_overflow = overflow, dropped_or_cqes = cqes,
                                        array_or_flags = flags */
};

struct xr_buf {                      /* struct io_uring_buf; the ring's tail overlays the
                                        resv field of its first entry */
    uint64_t addr;
    uint32_t len;
    uint16_t bid;
    uint16_t resv;
};

struct xr_rsrc_register {           /* struct io_uring_rsrc_register */
    uint32_t nr;
    uint32_t flags;
    uint64_t resv2;
    uint64_t data;
    uint64_t tags;
};

struct xr_files_update {             /* struct io_uring_files_update */
    uint32_t offset;
    uint32_t resv;
    uint64_t fds;
};

struct xr_buf_reg {                  /* struct io_uring_buf_reg */
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};

enum {
    XR_OP_ASYNC_CANCEL = 14,
    XR_OP_SEND = 26,
    XR_OP_RECV = 27,
    XR_SQE_FIXED_FILE = 1 << 0,
    XR_SQE_BUFFER_SELECT = 1 << 5,
    XR_RECV_MULTISHOT = 1 << 1,      /* in sqe->ioprio */
    XR_CQE_F_BUFFER = 1 << 0,
    XR_CQE_F_MORE = 1 << 1,
    XR_CQE_F_BUF_MORE = 1 << 4,      /* IORING_CQE_F_BUF_MORE: the buffer is not used up */
    XR_CQE_BUFFER_SHIFT = 16,
    XR_SETUP_CQSIZE = 1 << 3,
    XR_SETUP_SUBMIT_ALL = 1 << 7,
    XR_SETUP_COOP_TASKRUN = 1 << 8,  /* completions wait for our next system call: no IPIs */
    XR_SETUP_TASKRUN_FLAG = 1 << 9,  /* ... and the SQ flags say when some are waiting */
    XR_SETUP_SINGLE_ISSUER = 1 << 12,
    XR_SQ_TASKRUN = 1 << 2,
    XR_FEAT_SINGLE_MMAP = 1 << 0,
    XR_FEAT_NODROP = 1 << 1,
    XR_FEAT_FAST_POLL = 1 << 5,
    XR_ENTER_GETEVENTS = 1 << 0,
    XR_REGISTER_FILES_UPDATE = 6,
    XR_REGISTER_FILES2 = 13,
    XR_REGISTER_PBUF_RING = 22,
    XR_RSRC_REGISTER_SPARSE = 1 << 0,
    XR_PBUF_RING_INC = 1 << 1,       /* IOU_PBUF_RING_INC (Linux 6.12) */
    XR_ASYNC_CANCEL_ALL = 1 << 0,
    XR_BUFFER_GROUP = 0,
};

#define XR_OFF_SQ_RING 0ULL
#define XR_OFF_CQ_RING 0x8000000ULL
#define XR_OFF_SQES 0x10000000ULL

#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#ifdef IORING_RECV_MULTISHOT         /* a header new enough to compare with */
_Static_assert(sizeof(struct xr_sqe) == sizeof(struct io_uring_sqe), "sqe size");
_Static_assert(offsetof(struct xr_sqe, user_data) == offsetof(struct io_uring_sqe, user_data),
               "sqe user_data");
_Static_assert(offsetof(struct xr_sqe, buf_group) == offsetof(struct io_uring_sqe, buf_group),
               "sqe buf_group");
_Static_assert(offsetof(struct xr_sqe, op_flags) == offsetof(struct io_uring_sqe, msg_flags),
               "sqe msg_flags");
_Static_assert(sizeof(struct xr_cqe) == sizeof(struct io_uring_cqe), "cqe size");
_Static_assert(sizeof(struct xr_params) == sizeof(struct io_uring_params), "params size");
_Static_assert(offsetof(struct xr_params, cq_off) == offsetof(struct io_uring_params, cq_off),
               "params cq_off");
_Static_assert(sizeof(struct xr_buf) == sizeof(struct io_uring_buf), "buf size");
_Static_assert(sizeof(struct xr_buf_reg) == sizeof(struct io_uring_buf_reg), "buf_reg size");
_Static_assert(sizeof(struct xr_rsrc_register) == sizeof(struct io_uring_rsrc_register),
               "rsrc_register size");
_Static_assert(sizeof(struct xr_files_update) == sizeof(struct io_uring_files_update),
               "files_update size");
_Static_assert((int)XR_OP_SEND == (int)IORING_OP_SEND && (int)XR_OP_RECV == (int)IORING_OP_RECV
               && (int)XR_OP_ASYNC_CANCEL == (int)IORING_OP_ASYNC_CANCEL, "opcodes");
_Static_assert(XR_RECV_MULTISHOT == IORING_RECV_MULTISHOT
               && XR_SQE_BUFFER_SELECT == IOSQE_BUFFER_SELECT
               && XR_CQE_F_MORE == IORING_CQE_F_MORE
               && (int)XR_REGISTER_PBUF_RING == (int)IORING_REGISTER_PBUF_RING
               && XR_SETUP_COOP_TASKRUN == IORING_SETUP_COOP_TASKRUN
               && XR_SQ_TASKRUN == IORING_SQ_TASKRUN
               && XR_SETUP_SINGLE_ISSUER == IORING_SETUP_SINGLE_ISSUER
               && XR_SQE_FIXED_FILE == IOSQE_FIXED_FILE
               && (int)XR_REGISTER_FILES_UPDATE == (int)IORING_REGISTER_FILES_UPDATE
               && (int)XR_REGISTER_FILES2 == (int)IORING_REGISTER_FILES2
               && XR_RSRC_REGISTER_SPARSE == IORING_RSRC_REGISTER_SPARSE, "flags");
#endif
#ifdef IORING_CQE_F_BUF_MORE         /* Linux 6.12 headers: incremental buffer consumption */
_Static_assert(XR_CQE_F_BUF_MORE == IORING_CQE_F_BUF_MORE
               && (int)XR_PBUF_RING_INC == (int)IOU_PBUF_RING_INC, "incremental buffers");
#endif
#endif
#endif

typedef struct {
    int fd;                          /* -1: not open */
    uint32_t features;
    /* submission queue */
    uint32_t *sq_head, *sq_tail, *sq_flags;
    uint32_t sq_mask, sq_entries;
    uint32_t sq_local_tail;          /* SQEs prepared, published at submit */
    struct xr_sqe *sqes;
    /* completion queue */
    uint32_t *cq_head, *cq_tail;
    uint32_t cq_mask;
    struct xr_cqe *cqes;
    /* mappings */
    void *sq_map, *cq_map;
    size_t sq_map_size, cq_map_size, sqes_size;
    /* provided buffers: buffer bid is buffers + bid * buf_size; consumed incrementally, a
       buffer takes the receives of many sockets one after the other (buf_used[bid] bytes so
       far), else each receive takes a buffer of its own */
    struct xr_buf *buf_ring;
    size_t buf_ring_size;
    uint8_t *buffers;
    uint32_t buf_count, buf_size;
    uint16_t buf_tail;
    int buf_incremental;
    uint32_t *buf_used;
    /* registered files: a request naming a slot spares the kernel looking the descriptor up
       (and its reference count) each time; free slots are a stack */
    uint32_t *free_slots;
    uint32_t free_count, file_slots;
} xr_ring;

static inline int xr_setup(unsigned entries, struct xr_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static inline int xr_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static inline void xr_close(xr_ring *r)
{
    if (r->fd >= 0)
        close(r->fd);                /* cancels what is still in flight */
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_size);
    if (r->cq_map && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_map_size);
    if (r->sq_map && r->sq_map != MAP_FAILED)
        munmap(r->sq_map, r->sq_map_size);
    if (r->buf_ring && r->buf_ring != MAP_FAILED)
        munmap(r->buf_ring, r->buf_ring_size);
    free(r->buffers);
    free(r->buf_used);
    free(r->free_slots);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
}

static inline void xr_buf_put(xr_ring *r, uint16_t bid)
{
    struct xr_buf *b = &r->buf_ring[r->buf_tail & (r->buf_count - 1)];
    b->addr = (uint64_t)(uintptr_t)(r->buffers + (size_t)bid * r->buf_size);
    b->len = r->buf_size;
    b->bid = bid;
    r->buf_tail++;
}

static inline void xr_buf_publish(xr_ring *r)
{
    __atomic_store_n(&r->buf_ring[0].resv, r->buf_tail, __ATOMIC_RELEASE);
}

/* Give buffer bid back to the kernel after its bytes were used. */
static inline void xr_buf_recycle(xr_ring *r, uint16_t bid)
{
    xr_buf_put(r, bid);
    xr_buf_publish(r);
}

/* The bytes of a receive completion that took `length` bytes of buffer `bid`, or NULL for a
 * buffer we do not have (not to be recycled) or more bytes than it holds. *finished says
 * whether the kernel is done with the buffer: then recycle it once the bytes are used.
 * Incremental consumption (Linux 6.12) puts consecutive receives side by side in one buffer,
 * so that the receives of a round share cache lines and pages instead of each touching a
 * buffer of its own; the kernel advances the buffer's address itself, and we track the same
 * position (io_uring's documentation of IOU_PBUF_RING_INC). */
static inline const uint8_t *xr_buf_data(xr_ring *r, uint16_t bid, uint32_t length,
                                         uint32_t cqe_flags, int *finished)
{
    uint8_t *buffer;
    uint32_t used;
    *finished = 0;
    if (bid >= r->buf_count)
        return NULL;
    *finished = 1;
    buffer = r->buffers + (size_t)bid * r->buf_size;
    if (!r->buf_incremental)
        return length <= r->buf_size ? buffer : NULL;
    used = r->buf_used[bid];
    *finished = !(cqe_flags & XR_CQE_F_BUF_MORE);
    if (length > r->buf_size - used) {
        /* Our position and the kernel's disagree: nothing more is read from this buffer
         * until the kernel is done with it (no position past its end, ever). */
        r->buf_used[bid] = *finished ? 0 : r->buf_size;
        return NULL;
    }
    r->buf_used[bid] = *finished ? 0 : used + length;
    return buffer + used;
}

/* A sparse table of `slots` registered files (Linux 5.19); without it every request names
 * its descriptor. Not an error when refused (RLIMIT_NOFILE bounds the table). */
static inline void xr_register_files(xr_ring *r, unsigned slots)
{
    struct xr_rsrc_register reg;
    unsigned i;
    r->free_slots = malloc(slots * sizeof(uint32_t));
    if (!r->free_slots)
        return;
    memset(&reg, 0, sizeof(reg));
    reg.nr = slots;
    reg.flags = XR_RSRC_REGISTER_SPARSE;
    if (syscall(__NR_io_uring_register, r->fd, XR_REGISTER_FILES2, &reg, sizeof(reg)) < 0) {
        free(r->free_slots);
        r->free_slots = NULL;
        return;
    }
    r->file_slots = slots;
    for (i = 0; i < slots; i++)
        r->free_slots[i] = slots - 1 - i;
    r->free_count = slots;
}

/* Put `fd` into a free slot: returns the slot, or -1 (none free, or refused: use the fd). */
static inline int xr_file_add(xr_ring *r, int fd)
{
    struct xr_files_update update;
    int32_t fds[1];
    uint32_t slot;
    if (r->free_count == 0)
        return -1;
    slot = r->free_slots[r->free_count - 1];
    fds[0] = fd;
    update.offset = slot;
    update.resv = 0;
    update.fds = (uint64_t)(uintptr_t)fds;
    if (syscall(__NR_io_uring_register, r->fd, XR_REGISTER_FILES_UPDATE, &update, 1) != 1)
        return -1;
    r->free_count--;
    return (int)slot;
}

/* Empty a slot (requests still in flight keep their own reference to the file). */
static inline void xr_file_remove(xr_ring *r, int slot)
{
    struct xr_files_update update;
    int32_t fds[1] = {-1};
    update.offset = (uint32_t)slot;
    update.resv = 0;
    update.fds = (uint64_t)(uintptr_t)fds;
    if (syscall(__NR_io_uring_register, r->fd, XR_REGISTER_FILES_UPDATE, &update, 1) == 1)
        r->free_slots[r->free_count++] = (uint32_t)slot;
}

/* Name the file of a request: a registered slot if the connection has one, else its fd. */
static inline void xr_set_file(struct xr_sqe *sqe, int fd, int slot)
{
    if (slot >= 0) {
        sqe->fd = slot;
        sqe->flags |= XR_SQE_FIXED_FILE;
    } else {
        sqe->fd = fd;
    }
}

/* Linux 6.0, the first with multishot receives, is also the first that knows
 * IORING_SETUP_SINGLE_ISSUER: a one-entry ring with it tells the kernels that would take our
 * ring but refuse its receives (EINVAL on the first one) from the ones that serve them. */
static inline int xr_kernel_has_multishot_recv(void)
{
    struct xr_params p;
    int fd;
    memset(&p, 0, sizeof(p));
    p.flags = XR_SETUP_SINGLE_ISSUER;
    fd = xr_setup(1, &p);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* Register `buf_count` (a power of two) provided buffers of `buf_size` bytes, consumed
 * incrementally if asked (IORING_REGISTER_PBUF_RING, Linux 5.19; incremental: 6.12, else
 * -EINVAL). Returns 0 or -errno, with nothing registered. */
static inline int xr_provide_buffers(xr_ring *r, unsigned buf_count, unsigned buf_size,
                                     int incremental)
{
    struct xr_buf_reg reg;
    unsigned i;
    int err = ENOMEM;
    if (buf_count == 0 || (buf_count & (buf_count - 1)) || buf_count > 32768 || buf_size == 0
            || r->buffers)
        return -EINVAL;
    r->buf_count = buf_count;
    r->buf_size = buf_size;
    r->buf_ring_size = buf_count * sizeof(struct xr_buf);
    r->buf_ring = mmap(NULL, r->buf_ring_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r->buffers = malloc((size_t)buf_count * buf_size);
    r->buf_used = incremental ? calloc(buf_count, sizeof(uint32_t)) : NULL;
    if (r->buf_ring == MAP_FAILED || !r->buffers || (incremental && !r->buf_used))
        goto fail;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)r->buf_ring;
    reg.ring_entries = buf_count;
    reg.bgid = XR_BUFFER_GROUP;
    reg.flags = incremental ? XR_PBUF_RING_INC : 0;
    if (syscall(__NR_io_uring_register, r->fd, XR_REGISTER_PBUF_RING, &reg, 1) < 0) {
        err = errno;
        goto fail;
    }
    r->buf_incremental = incremental;
    r->buf_tail = 0;
    for (i = 0; i < buf_count; i++)
        xr_buf_put(r, (uint16_t)i);
    xr_buf_publish(r);
    return 0;
fail:
    if (r->buf_ring && r->buf_ring != MAP_FAILED)
        munmap(r->buf_ring, r->buf_ring_size);
    free(r->buffers);
    free(r->buf_used);
    r->buf_ring = NULL;
    r->buffers = NULL;
    r->buf_used = NULL;
    r->buf_count = r->buf_size = 0;
    return -err;
}

/* Open a ring of `entries` SQEs, 4 * entries CQEs and up to `file_slots` registered files;
 * its receive buffers come from xr_provide_buffers. Returns 0, or -errno with the ring
 * closed: io_uring refused (-EPERM, -ENOSYS from a sysctl or seccomp), or a kernel before
 * 6.0 (-ENOSYS) - they fail here, not at the first receive. */
static inline int xr_open(xr_ring *r, unsigned entries, unsigned file_slots)
{
    struct xr_params p;
    unsigned i;
    int err;

    memset(r, 0, sizeof(*r));
    r->fd = -1;
    if (!xr_kernel_has_multishot_recv())
        return errno == EINVAL ? -ENOSYS : -errno;
    /* Not SINGLE_ISSUER itself: an engine may be made in one thread and run in another's
     * loop. COOP_TASKRUN: completions wait for our next system call, no IPIs. */
    memset(&p, 0, sizeof(p));
    p.flags = XR_SETUP_CQSIZE | XR_SETUP_SUBMIT_ALL | XR_SETUP_COOP_TASKRUN
              | XR_SETUP_TASKRUN_FLAG;
    p.cq_entries = 4 * entries;
    r->fd = xr_setup(entries, &p);
    if (r->fd < 0)
        return -errno;
    r->features = p.features;
    if (!(p.features & XR_FEAT_SINGLE_MMAP) || !(p.features & XR_FEAT_NODROP)
            || !(p.features & XR_FEAT_FAST_POLL)) {
        xr_close(r);
        return -ENOSYS;
    }
    r->sq_map_size = p.sq_off.array_or_flags + p.sq_entries * sizeof(uint32_t);
    r->cq_map_size = p.cq_off.dropped_or_cqes + p.cq_entries * sizeof(struct xr_cqe);
    if (r->cq_map_size > r->sq_map_size)
        r->sq_map_size = r->cq_map_size;
    r->sq_map = mmap(NULL, r->sq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     r->fd, XR_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED)
        goto fail;
    r->cq_map = r->sq_map;           /* IORING_FEAT_SINGLE_MMAP */
    r->sqes_size = p.sq_entries * sizeof(struct xr_sqe);
    r->sqes = mmap(NULL, r->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   r->fd, XR_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;
    r->sq_head = (uint32_t *)((char *)r->sq_map + p.sq_off.head);
    r->sq_tail = (uint32_t *)((char *)r->sq_map + p.sq_off.tail);
    r->sq_flags = (uint32_t *)((char *)r->sq_map + p.sq_off.flags_or_overflow);
    r->sq_mask = *(uint32_t *)((char *)r->sq_map + p.sq_off.ring_mask);
    r->sq_entries = p.sq_entries;
    r->sq_local_tail = *r->sq_tail;
    {
        uint32_t *array = (uint32_t *)((char *)r->sq_map + p.sq_off.array_or_flags);
        for (i = 0; i < p.sq_entries; i++)
            array[i] = i;            /* SQE i always sits in array slot i */
    }
    r->cq_head = (uint32_t *)((char *)r->cq_map + p.cq_off.head);
    r->cq_tail = (uint32_t *)((char *)r->cq_map + p.cq_off.tail);
    r->cq_mask = *(uint32_t *)((char *)r->cq_map + p.cq_off.ring_mask);
    r->cqes = (struct xr_cqe *)((char *)r->cq_map + p.cq_off.dropped_or_cqes);
    if (file_slots)
        xr_register_files(r, file_slots);
    return 0;
fail:
    err = errno ? errno : ENOMEM;
    xr_close(r);
    return -err;
}

/* The next free SQE (zeroed), or NULL when the queue is full: submit first. */
static inline struct xr_sqe *xr_get_sqe(xr_ring *r)
{
    uint32_t head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    struct xr_sqe *sqe;
    if (r->sq_local_tail - head >= r->sq_entries)
        return NULL;
    sqe = &r->sqes[r->sq_local_tail & r->sq_mask];
    r->sq_local_tail++;
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

static inline void xr_prep_recv_multishot(struct xr_sqe *sqe, int fd, int slot,
                                          uint64_t user_data)
{
    sqe->opcode = XR_OP_RECV;
    sqe->ioprio = XR_RECV_MULTISHOT;
    sqe->flags = XR_SQE_BUFFER_SELECT;
    xr_set_file(sqe, fd, slot);
    sqe->buf_group = XR_BUFFER_GROUP;
    sqe->user_data = user_data;
}

static inline void xr_prep_send(struct xr_sqe *sqe, int fd, int slot, const void *data,
                                uint32_t length, int msg_flags, uint64_t user_data)
{
    sqe->opcode = XR_OP_SEND;
    xr_set_file(sqe, fd, slot);
    sqe->addr = (uint64_t)(uintptr_t)data;
    sqe->len = length;
    sqe->op_flags = (uint32_t)msg_flags;
    sqe->user_data = user_data;
}

/* Cancel every request carrying `target`; the cancel's own completion carries user_data 0. */
static inline void xr_prep_cancel(struct xr_sqe *sqe, uint64_t target)
{
    sqe->opcode = XR_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->op_flags = XR_ASYNC_CANCEL_ALL;
    sqe->user_data = 0;
}

/* SQEs the kernel has not taken yet: prepared ones, and published ones an earlier enter left
 * (it takes none while completions wait in its overflow list on older kernels). */
static inline uint32_t xr_pending(const xr_ring *r)
{
    return r->sq_local_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
}

/* Publish the prepared SQEs and enter the kernel: it issues them (a send that the socket
 * takes completes right there), runs completions that wait for us, and with wait_nr > 0
 * sleeps until that many completions exist. Returns >= 0 or -errno. */
static inline int xr_submit(xr_ring *r, unsigned wait_nr)
{
    uint32_t n = xr_pending(r);
    int ret;
    __atomic_store_n(r->sq_tail, r->sq_local_tail, __ATOMIC_RELEASE);
    do {
        ret = xr_enter(r->fd, n, wait_nr, XR_ENTER_GETEVENTS);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 ? -errno : ret;
}

/* Completions the kernel ran but we have not reaped: a sign that another round pays. */
static inline int xr_work_waiting(const xr_ring *r)
{
    return (__atomic_load_n(r->sq_flags, __ATOMIC_RELAXED) & XR_SQ_TASKRUN) != 0;
}

static inline uint32_t xr_cq_head(const xr_ring *r)
{
    return *r->cq_head;
}

static inline uint32_t xr_cq_tail(const xr_ring *r)
{
    return __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
}

static inline const struct xr_cqe *xr_cqe_at(const xr_ring *r, uint32_t index)
{
    return &r->cqes[index & r->cq_mask];
}

static inline void xr_cq_advance(xr_ring *r, uint32_t head)
{
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
}

/* Is there an unreaped completion of `user_data` with result `res`? (closing a connection
 * asks whether its last send went out before it sends the rest at once) */
static inline int xr_cq_find(const xr_ring *r, uint64_t user_data, int32_t *res)
{
    uint32_t head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
        const struct xr_cqe *cqe = &r->cqes[head & r->cq_mask];
        if (cqe->user_data == user_data) {
            *res = cqe->res;
            return 1;
        }
    }
    return 0;
}

#endif

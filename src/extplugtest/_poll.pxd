# poll(2), which Cython's posix includes do not declare: waiting on one descriptor without an
# epoll set (the engines' bounded waits).
cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    enum: POLLIN

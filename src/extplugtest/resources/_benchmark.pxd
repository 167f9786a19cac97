from extplugtest.coap._udp cimport FastResource

cdef class BenchmarkFastPath(FastResource):
    cdef public bint enabled
    cdef public int nnn                 # the "hello observe NNN" number of the last timer tick
    cdef unsigned long long answered

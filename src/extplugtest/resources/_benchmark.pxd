from extplugtest.coap._udp cimport FastResource

cdef class BenchmarkFastPath(FastResource):
    cdef public bint enabled
    cdef public int nnn                 # the "hello observe NNN" number of the last timer tick
    cdef public int max_body            # COAP.MAX_RESOURCE_BODY_SIZE: the largest rlen
    cdef unsigned long long answered

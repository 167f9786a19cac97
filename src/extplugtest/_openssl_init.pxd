# OpenSSL initialisation, called once at import by every extension module that uses libcrypto,
# before its first other libcrypto call (csrc/openssl_init.h explains why). Declarations only: a
# cimport of this file adds no runtime import.

cdef extern from "openssl_init.h":
    int extplugtest_openssl_init() except 0

/* OpenSSL initialisation for every extension module that uses libcrypto.
 *
 * Each such module calls extplugtest_openssl_init() once at import, before any other libcrypto
 * call (through src/extplugtest/_openssl_init.pxd).
 *
 * In a wheel built with EXTPLUGTEST_STATIC_OPENSSL=1, every extension carries its own static,
 * symbol-hidden copy of libcrypto (see setup.py and wheels/README.md). Such a copy must not read
 * the host's openssl.cnf: its OPENSSLDIR was compiled for another system, and a host config
 * that activates other providers (a FIPS module, say) could break or change it. So each copy is
 * initialised with OPENSSL_INIT_NO_LOAD_CONFIG before its first use.
 *
 * A developer build links the system's shared libcrypto, which CPython's _ssl and _hashlib share.
 * The config is loaded once per libcrypto, so disabling it there would change the ssl and
 * hashlib modules for the whole process, depending on which module is imported first; that
 * build keeps OpenSSL's default (the host's config is the system library's own).
 */
#ifndef EXTPLUGTEST_OPENSSL_INIT_H
#define EXTPLUGTEST_OPENSSL_INIT_H

#include <Python.h>
#include <openssl/crypto.h>

/* 1 on success; 0 with ImportError set. */
static int extplugtest_openssl_init(void)
{
#ifdef EXTPLUGTEST_STATIC_OPENSSL
    const uint64_t options = OPENSSL_INIT_NO_LOAD_CONFIG;
#else
    const uint64_t options = 0;
#endif
    if (OPENSSL_init_crypto(options, NULL) != 1) {
        PyErr_SetString(PyExc_ImportError, "OPENSSL_init_crypto failed");
        return 0;
    }
    return 1;
}

#endif /* EXTPLUGTEST_OPENSSL_INIT_H */

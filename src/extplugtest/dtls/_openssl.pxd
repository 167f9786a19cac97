# libcrypto declarations used by the DTLS record layer (OpenSSL >= 3.0).
#
# Only what the AEAD record protection needs: the fetched ciphers, whose provider's functions
# protect the records (csrc/aead_provider.h), params, and the error queue.

cdef extern from "openssl/core.h" nogil:
    ctypedef struct OSSL_LIB_CTX:
        pass
    ctypedef struct OSSL_PARAM:
        const char* key
        unsigned int data_type
        void* data
        size_t data_size
        size_t return_size

cdef extern from "openssl/params.h" nogil:
    OSSL_PARAM OSSL_PARAM_construct_end()

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER:
        pass

    # Explicit fetch once per process: the EVP_aes_*() placeholders fetch implicitly on every
    # init that passes them (openssl#20625).
    EVP_CIPHER* EVP_CIPHER_fetch(OSSL_LIB_CTX* ctx, const char* algorithm,
                                 const char* properties)

cdef extern from "aead_provider.h" nogil:
    # AEAD through the provider's own cipher functions (see the header for why).
    ctypedef struct aead_impl:
        pass
    int aead_impl_resolve(const EVP_CIPHER* cipher, int ccm, aead_impl* impl)
    void* aead_ctx_new(const aead_impl* impl, const unsigned char* key, size_t key_length,
                       int enc, size_t iv_length, size_t tag_length)
    void aead_ctx_free(const aead_impl* impl, void* ctx)
    int aead_seal(const aead_impl* impl, void* ctx, size_t tag_length,
                  const unsigned char* nonce, size_t nonce_length, const unsigned char* aad,
                  size_t aad_length, const unsigned char* plaintext, size_t length,
                  unsigned char* out)
    int aead_open(const aead_impl* impl, void* ctx, size_t tag_length,
                  const unsigned char* nonce, size_t nonce_length, const unsigned char* aad,
                  size_t aad_length, const unsigned char* ciphertext, size_t length,
                  const unsigned char* tag, unsigned char* out)

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

cdef extern from "openssl/crypto.h" nogil:
    enum:
        OPENSSL_VERSION
    const char* OpenSSL_version(int type)
    void OPENSSL_cleanse(void* ptr, size_t length)

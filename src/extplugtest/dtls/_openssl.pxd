# libcrypto declarations used by the DTLS record layer (OpenSSL >= 3.0).
#
# Only what the AEAD record protection needs: fetched ciphers, cipher contexts, the AEAD ctrls
# and the error queue. See /work/shared/reference/python-anchors.md §2.1 for the call sequence.

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct OSSL_LIB_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct EVP_CIPHER_CTX:
        pass

    enum:
        EVP_CTRL_AEAD_SET_IVLEN
        EVP_CTRL_AEAD_GET_TAG
        EVP_CTRL_AEAD_SET_TAG

    # Explicit fetch once per process: the EVP_aes_*() placeholders fetch implicitly on every
    # init that passes them (openssl#20625).
    EVP_CIPHER* EVP_CIPHER_fetch(OSSL_LIB_CTX* ctx, const char* algorithm,
                                 const char* properties)
    void EVP_CIPHER_free(EVP_CIPHER* cipher)

    EVP_CIPHER_CTX* EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX* ctx)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX* ctx, int type, int arg, void* ptr)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, void* impl,
                          const unsigned char* key, const unsigned char* iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl,
                         const unsigned char* data, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl)

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

cdef extern from "openssl/crypto.h" nogil:
    enum:
        OPENSSL_VERSION
    const char* OpenSSL_version(int type)
    void OPENSSL_cleanse(void* ptr, size_t length)

"""DTLS 1.2 (RFC 6347) with Connection ID (RFC 9146) over OpenSSL libcrypto.

``_record`` is the record layer: record parsing, AEAD record protection (AES-128-CCM-8,
AES-128-CCM, AES-128-GCM) and the anti-replay window.
"""

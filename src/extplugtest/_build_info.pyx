"""Build information for the tools' ``--version``.

The package version, the OpenSSL the C extensions run with (and whether it is linked statically,
as in the manylinux wheels, or is the system's shared libcrypto) and, for contrast, the OpenSSL
inside the ``cryptography`` package, which brings its own.
"""

import argparse

from extplugtest import __version__

cdef extern from "openssl/opensslv.h":
    const char* OPENSSL_VERSION_TEXT

cdef extern from *:
    """
    #ifdef EXTPLUGTEST_STATIC_OPENSSL
    #define EXTPLUGTEST_OPENSSL_LINKAGE "static, symbols hidden"
    #else
    #define EXTPLUGTEST_OPENSSL_LINKAGE "shared"
    #endif
    """
    const char* EXTPLUGTEST_OPENSSL_LINKAGE


def openssl_linkage() -> str:
    """How the C extensions link libcrypto: "static, symbols hidden" or "shared"."""
    return EXTPLUGTEST_OPENSSL_LINKAGE.decode()


def openssl_headers() -> str:
    """OPENSSL_VERSION_TEXT of the headers the extensions were compiled against."""
    return OPENSSL_VERSION_TEXT.decode()


def openssl_version() -> str:
    """OpenSSL_version(OPENSSL_VERSION) as the DTLS record layer's libcrypto reports it."""
    from extplugtest.dtls._record import openssl_version

    return openssl_version()


def cryptography_openssl_version() -> str:
    """The OpenSSL version of the ``cryptography`` package (its wheels link their own)."""
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend
    except ImportError as exc:
        return f"unavailable ({exc})"
    return f"{backend.openssl_version_text()} (cryptography {cryptography.__version__})"


def version_text(prog: str) -> str:
    """The lines ``PROG --version`` prints."""
    return (
        f"{prog} {__version__} (extplugtest)\n"
        f"OpenSSL in the C extensions: {openssl_version()} ({openssl_linkage()}; "
        f"headers {openssl_headers()})\n"
        f"OpenSSL in cryptography:     {cryptography_openssl_version()}"
    )


class VersionAction(argparse.Action):
    """``--version`` for argparse: prints version_text(parser.prog) to stdout and exits. Unlike
    argparse's "version" action it keeps the line breaks and computes the text only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the version and the OpenSSL versions in use, then exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text(parser.prog), flush=True)
        parser.exit()

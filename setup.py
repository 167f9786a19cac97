"""Build script for the Cython extensions.

Every extension is compiled against the system OpenSSL libcrypto (Debian ``libssl-dev``); the
flags come from pkg-config when it knows libcrypto, otherwise plain ``-lcrypto`` is used.
Metadata lives in pyproject.toml.
"""

import os
import shlex
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup


def libcrypto_flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags for libcrypto (OPENSSL_DIR overrides pkg-config)."""
    prefix = os.environ.get("OPENSSL_DIR")
    if prefix:
        return [f"-I{prefix}/include"], [f"-L{prefix}/lib", f"-L{prefix}/lib64", "-lcrypto"]
    try:
        cflags = subprocess.run(
            ["pkg-config", "--cflags", "libcrypto"], capture_output=True, text=True, check=True
        ).stdout
        libs = subprocess.run(
            ["pkg-config", "--libs", "libcrypto"], capture_output=True, text=True, check=True
        ).stdout
        return shlex.split(cflags), shlex.split(libs)
    except (OSError, subprocess.CalledProcessError):
        return [], ["-lcrypto"]


CFLAGS, LDFLAGS = libcrypto_flags()
CFLAGS += ["-O2", "-Wno-unused-function"]

# (module, source) pairs; every module is a private accelerator with a .pxd beside it.
MODULES = [
    ("extplugtest._net", "src/extplugtest/_net.pyx"),
    ("extplugtest.coap._codec", "src/extplugtest/coap/_codec.pyx"),
    ("extplugtest.coap._dedup", "src/extplugtest/coap/_dedup.pyx"),
    ("extplugtest.coap._udp", "src/extplugtest/coap/_udp.pyx"),
    ("extplugtest.resources._benchmark", "src/extplugtest/resources/_benchmark.pyx"),
    ("extplugtest.server._netif", "src/extplugtest/server/_netif.pyx"),
    ("extplugtest.tools._loadgen", "src/extplugtest/tools/_loadgen.pyx"),
    ("extplugtest.tools._natfwd", "src/extplugtest/tools/_natfwd.pyx"),
    ("extplugtest.dtls._record", "src/extplugtest/dtls/_record.pyx"),
    ("extplugtest.dtls._datapath", "src/extplugtest/dtls/_datapath.pyx"),
    ("extplugtest.coap._tcp_codec", "src/extplugtest/coap/_tcp_codec.pyx"),
]

extensions = [
    Extension(
        name,
        [source],
        include_dirs=["csrc"],
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
    )
    for name, source in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)

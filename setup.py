"""Build script for the Cython extensions.

Every extension is compiled against the system OpenSSL libcrypto (Debian ``libssl-dev``); the
flags come from pkg-config when it knows libcrypto, otherwise plain ``-lcrypto`` is used.
``tools._loadgen`` also links libssl (likewise; libssl.a in the static wheel build).
Metadata lives in pyproject.toml.
"""

import os
import shlex
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false", "off")


def _static_libcrypto(prefix: str | None, name: str = "libcrypto") -> str:
    """Path of libcrypto.a (or *name*.a): under OPENSSL_DIR, else in the compiler's (multiarch)
    library dirs."""
    return _static_library(
        prefix, name, "install libssl-dev, or set OPENSSL_DIR to an OpenSSL built with no-shared"
    )


def _static_library(prefix: str | None, name: str, remedy: str) -> str:
    """Path of *name*.a under OPENSSL_DIR, else in the compiler's (multiarch) library dirs."""
    if prefix:
        dirs = [f"{prefix}/lib", f"{prefix}/lib64"]
    else:
        dirs = []
        try:
            libdir = subprocess.run(
                ["pkg-config", "--variable=libdir", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            dirs.append(libdir)
        except (OSError, subprocess.CalledProcessError):
            pass
        try:
            multiarch = subprocess.run(
                [os.environ.get("CC", "gcc").split()[0], "-print-multiarch"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            if multiarch:
                dirs.append(f"/usr/lib/{multiarch}")
        except (OSError, subprocess.CalledProcessError):
            pass
        dirs += ["/usr/local/lib64", "/usr/local/lib", "/usr/lib64", "/usr/lib"]
    for directory in dirs:
        if os.path.isfile(f"{directory}/{name}.a"):
            return f"{directory}/{name}.a"
    raise SystemExit(f"EXTPLUGTEST_STATIC_OPENSSL=1: no {name}.a in {', '.join(dirs)} ({remedy})")


# Debian packages with the static archives that Debian 13's libcrypto.a needs.
STATIC_ARCHIVE_PACKAGES = {"z": "zlib1g-dev", "zstd": "libzstd-dev"}
SYSTEM_LIBRARIES = {"crypto", "ssl", "dl", "pthread", "c", "m", "rt"}


def _libcrypto_dependencies(prefix: str | None) -> list[str]:
    """The static archives of what libcrypto.a itself links: none for OpenSSL 3.0 (Debian 12),
    zlib and zstd for Debian 13's 3.5 (certificate compression), from ``pkg-config --static``."""
    env = dict(os.environ)
    if prefix:
        env["PKG_CONFIG_LIBDIR"] = f"{prefix}/lib/pkgconfig:{prefix}/lib64/pkgconfig"
    try:
        libs = subprocess.run(
            ["pkg-config", "--static", "--libs-only-l", "libcrypto"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    names = [flag[2:] for flag in libs if flag.startswith("-l")]
    return [
        _static_library(
            prefix,
            f"lib{name}",
            f"install {STATIC_ARCHIVE_PACKAGES.get(name, f'the static lib{name}')}",
        )
        for name in names
        if name not in SYSTEM_LIBRARIES
    ]


def libcrypto_flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags for libcrypto (OPENSSL_DIR overrides pkg-config).

    EXTPLUGTEST_STATIC_OPENSSL=1 (the wheels, see wheels/README.md) links libcrypto.a into each
    extension instead, with every symbol but PyInit_* hidden so that it cannot interpose on, or
    be interposed by, another libcrypto in the process; each copy skips the host's openssl.cnf
    (csrc/openssl_init.h).
    """
    prefix = os.environ.get("OPENSSL_DIR")
    if _truthy("EXTPLUGTEST_STATIC_OPENSSL"):
        include = [f"-I{prefix}/include"] if prefix else []
        return (
            [*include, "-fvisibility=hidden", "-DEXTPLUGTEST_STATIC_OPENSSL=1"],
            [
                _static_libcrypto(prefix),
                *_libcrypto_dependencies(prefix),
                "-Wl,--exclude-libs,ALL",
                "-pthread",
                "-ldl",
                "-Wl,-S",
            ],
        )
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


def libssl_flags() -> list[str]:
    """Extra linker flags for the modules that also use libssl (placed before LDFLAGS: with
    EXTPLUGTEST_STATIC_OPENSSL=1 libssl.a must come before libcrypto.a)."""
    prefix = os.environ.get("OPENSSL_DIR")
    if _truthy("EXTPLUGTEST_STATIC_OPENSSL"):
        return [_static_libcrypto(prefix, "libssl")]
    if prefix:
        return [f"-L{prefix}/lib", f"-L{prefix}/lib64", "-lssl"]
    try:
        libs = subprocess.run(
            ["pkg-config", "--libs", "libssl"], capture_output=True, text=True, check=True
        ).stdout
        return shlex.split(libs)
    except (OSError, subprocess.CalledProcessError):
        return ["-lssl"]


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
    ("extplugtest.dtls._cid_table", "src/extplugtest/dtls/_cid_table.pyx"),
    ("extplugtest.dtls._datapath", "src/extplugtest/dtls/_datapath.pyx"),
    ("extplugtest.coap._tcp_codec", "src/extplugtest/coap/_tcp_codec.pyx"),
    ("extplugtest._build_info", "src/extplugtest/_build_info.pyx"),
    ("extplugtest.cluster._header", "src/extplugtest/cluster/_header.pyx"),
    ("extplugtest.cluster._router", "src/extplugtest/cluster/_router.pyx"),
]

# Modules that also link libssl (coaps+tcp in the benchmark's loop).
LIBSSL_MODULES = {"extplugtest.tools._loadgen"}
SSL_LDFLAGS = libssl_flags() if any(name in LIBSSL_MODULES for name, _ in MODULES) else []

extensions = [
    Extension(
        name,
        [source],
        include_dirs=["csrc"],
        extra_compile_args=CFLAGS,
        extra_link_args=[*SSL_LDFLAGS, *LDFLAGS] if name in LIBSSL_MODULES else LDFLAGS,
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

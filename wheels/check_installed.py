"""Check an installed extplugtest (from a wheel): run with the environment's python, outside the
source tree (wheels/smoke_test.sh and the cibuildwheel test command do).

1. Every extension module imports from site-packages (not from a source tree) and is a .so; the
   main ones are there.
2. With --static (or when the build says it linked OpenSSL statically): no module links libcrypto
   dynamically (`ldd`), and the static copies ignore the host's OpenSSL config: with OPENSSL_CONF
   naming a config that activates only OpenSSL's "null" provider (no ciphers), the DTLS record
   layer still imports and fetches AES-CCM/GCM, which a libcrypto that loads the config cannot.
3. The --version text names the OpenSSL in the extensions.

Exit status 0 when all hold; the last line printed is "static" or "shared".
"""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys
import sysconfig
import tempfile

EXPECTED = {
    "extplugtest._build_info",
    "extplugtest._net",
    "extplugtest.coap._codec",
    "extplugtest.coap._dedup",
    "extplugtest.coap._udp",
    "extplugtest.dtls._record",
}

NULL_PROVIDER_CONF = """\
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
null = null_sect
[null_sect]
activate = 1
"""

CONFIG_PROBE = """\
import extplugtest.coap._udp, extplugtest.dtls._record as record
print(record.openssl_version())
"""


def fail(message: str) -> None:
    print(f"check_installed.py: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    require_static = "--static" in sys.argv[1:]
    import extplugtest
    from extplugtest import _build_info

    site = pathlib.Path(sysconfig.get_paths()["platlib"]).resolve()
    package = pathlib.Path(extplugtest.__file__).resolve().parent
    if not package.is_relative_to(site):
        fail(f"extplugtest imported from {package}, not from {site}")
    found = set()
    for so in sorted(package.rglob("*.so")):
        name = ".".join([*so.relative_to(package.parent).parent.parts, so.name.split(".")[0]])
        module = importlib.import_module(name)
        path = pathlib.Path(module.__file__ or "").resolve()
        if path != so or path.suffix != ".so":
            fail(f"{name} imported from {path}, not {so}")
        found.add(name)
        print(f"    {name:36} {path.relative_to(site)}")
    if EXPECTED - found:
        fail(f"extension modules missing: {sorted(EXPECTED - found)}")
    print(f"    {len(found)} extension modules from {site}")

    linkage = _build_info.openssl_linkage().split(",")[0]
    if require_static and linkage != "static":
        fail(f"OpenSSL linkage is {linkage!r}, not static")
    dynamic = []
    # ldd is a system tool: the smoke test's PATH holds only the venv's bin/.
    system_path = {**os.environ, "PATH": os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/bin"}
    for so in sorted(package.rglob("*.so")):
        ldd = subprocess.run(
            ["ldd", str(so)], capture_output=True, text=True, timeout=30, env=system_path
        ).stdout
        if "libcrypto" in ldd:
            dynamic.append(so.name.split(".")[0])
    if linkage == "static":
        if dynamic:
            fail(f"OpenSSL is said to be static, yet ldd shows libcrypto for {dynamic}")
        print("    OpenSSL: static; no extension module links libcrypto dynamically (ldd)")
        with tempfile.TemporaryDirectory() as scratch:
            conf = pathlib.Path(scratch, "null-provider.cnf")
            conf.write_text(NULL_PROVIDER_CONF)
            probe = subprocess.run(
                [sys.executable, "-c", CONFIG_PROBE],
                env={**os.environ, "OPENSSL_CONF": str(conf)},
                capture_output=True,
                text=True,
                timeout=60,
                cwd=scratch,
            )
        if probe.returncode != 0:
            fail(f"with OPENSSL_CONF activating only the null provider:\n{probe.stderr}")
        print(
            "    host OpenSSL config ignored: with OPENSSL_CONF activating only the null "
            f"provider the record layer still has AES-CCM/GCM ({probe.stdout.strip()})"
        )
    else:
        print(f"    OpenSSL: {linkage} (libcrypto linked dynamically by {dynamic})")

    text = _build_info.version_text("extplugtest")
    if "OpenSSL in the C extensions: OpenSSL " not in text:
        fail(f"no OpenSSL version in the --version text:\n{text}")
    print(linkage)


if __name__ == "__main__":
    main()

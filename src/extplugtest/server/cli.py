"""``extserver``: the extended plugtest server (Californium's ExtendedTestServer options)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path

from extplugtest import __version__
from extplugtest._build_info import VersionAction
from extplugtest.cluster.options import (
    ClusterOptionError,
    add_cluster_options,
    cluster_config,
    join_dash_values,
)
from extplugtest.coap.transport_tcp import demo_tls_server_context
from extplugtest.dtls.credentials import PskFileError, PskStore
from extplugtest.dtls.handshake_server import ClientAuth, DtlsConfig, ExtendedMasterSecretMode
from extplugtest.dtls.pki import TrustStore, demo_server_credentials
from extplugtest.dtls.session_cache import SessionCache
from extplugtest.server.app import ExtendedServer, InterfaceSelection, StartupError
from extplugtest.server.config import DEFAULT_FILE, ConfigError, ServerConfig, parse_duration
from extplugtest.server.console import ServerConsole
from extplugtest.server.handover import (
    HandoverOptionError,
    RestoreConfig,
    RestoreServer,
    add_restore_options,
    restore_config,
    restore_from_peer,
    restore_payload,
)
from extplugtest.server.restart import restore_from_file, save_to_file, store_settings
from extplugtest.stdin_console import StdinConsole

EXIT_USAGE = 2
EXIT_FAILURE = 1

logger = logging.getLogger("extplugtest.server")


def build_parser() -> argparse.ArgumentParser:
    flag = argparse.BooleanOptionalAction
    parser = argparse.ArgumentParser(
        prog="extserver",
        description="CoAP extended plugtest server: extended resources (/benchmark, ...) on "
        "5783, the ETSI plugtest resources on 5683.",
        # No prefixes of long options: 2.5.0's --interfaces=lo would be taken as
        # --interfaces-pattern (picocli knows no abbreviations either).
        allow_abbrev=False,
    )
    parser.add_argument("--version", action=VersionAction)  # package and OpenSSL versions
    group = parser.add_argument_group("endpoints")
    group.add_argument(
        "--loopback",
        action=flag,
        default=True,
        help="endpoints on loopback and link-local addresses (default: on)",
    )
    group.add_argument(
        "--external",
        action=flag,
        default=True,
        help="endpoints on all other addresses (default: on)",
    )
    group.add_argument("--ipv4", action=flag, default=True, help="IPv4 endpoints (default: on)")
    group.add_argument("--ipv6", action=flag, default=True, help="IPv6 endpoints (default: on)")
    group.add_argument(
        "--interfaces-pattern",
        metavar="REGEX[,REGEX...]",
        default="",
        help="only addresses matching one of these regular expressions (IPv6 also as addr%%ifname)",
    )
    group.add_argument(
        "--coap-port",
        type=int,
        metavar="PORT",
        help="port of the extended endpoints (default: COAP.COAP_PORT, 5783)",
    )
    group.add_argument(
        "--plugtest-port",
        type=int,
        metavar="PORT",
        help="port of the plugtest endpoints (default: 5683)",
    )
    parser.add_argument(
        "--plugtest",
        action=flag,
        default=True,
        help="also serve the plugtest endpoints (default: on)",
    )
    parser.add_argument(
        "--benchmark",
        action=flag,
        default=False,
        help="enable the /benchmark resource (default: off, it answers 5.01)",
    )
    group.add_argument(
        "--dtls",
        action=flag,
        default=True,
        help="DTLS (coaps) endpoints on the next port: 5784 and 5684 (default: on)",
    )
    group.add_argument("--dtls-only", action="store_true", help="only DTLS endpoints, no plain UDP")
    group.add_argument(
        "--tcp",
        action=flag,
        default=True,
        help="CoAP over TCP and TLS (coap+tcp, coaps+tcp; RFC 8323) endpoints on the UDP and "
        "DTLS ports (default: on; --dtls-only turns them off)",
    )
    group.add_argument(
        "--client-auth",
        choices=("NONE", "WANTED", "NEEDED"),
        help="client certificates for DTLS (ECDHE_ECDSA suites) and TLS: not asked for, verified "
        "if sent, or required; overrides DTLS.CLIENT_AUTHENTICATION_MODE (default: "
        "DTLS WANTED on the extended endpoints, NEEDED on the plugtest ones; TLS WANTED)",
    )
    trust = group.add_mutually_exclusive_group()
    trust.add_argument(
        "--trust-store",
        type=Path,
        metavar="FILE.pem",
        help="PEM bundle of the CAs that client certificates (DTLS and TLS) must chain to "
        "(default: the demo CA)",
    )
    trust.add_argument(
        "--trust-all",
        action="store_true",
        help="accept any DTLS client certificate chain (its CertificateVerify is still "
        "checked); TLS keeps checking against the trust store",
    )
    parser.add_argument(
        "--psk-file",
        type=Path,
        metavar="FILE",
        help="extra PSK credentials: identity=base64secret or identity=:0x<hex> lines",
    )
    parser.add_argument(
        "--diagnose",
        action=flag,
        default=False,
        help="add the /diagnose resource (endpoint health counters; default: off)",
    )
    parser.add_argument(
        "--echo-delay",
        action=flag,
        default=False,
        help="let /echo honour ?delay=<ms> (default: off)",
    )
    parser.add_argument(
        "--notify-interval",
        default="5000ms",
        metavar="TIME",
        help="interval of the observe timers, e.g. 5s, 500ms (default: 5000ms, min 5ms)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help=f"properties file with Californium keys (default: ./{DEFAULT_FILE} if it exists)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    store = parser.add_argument_group(
        "graceful restart",
        "DTLS connections are saved to FILE when the server stops (SIGTERM, SIGINT, the "
        "console's exit, POST /shutdown) and restored from it at the next start, which then "
        "deletes FILE: clients go on without a new handshake",
    )
    store.add_argument("--store-file", type=Path, metavar="FILE", help="where to save them")
    store.add_argument(
        "--store-password64",
        metavar="BASE64",
        help="password (base64) that encrypts FILE (AES-GCM-128; default: not encrypted)",
    )
    store.add_argument(
        "--store-max-age",
        type=float,
        metavar="HOURS",
        help="restore only connections active within this many hours (required with --store-file)",
    )
    add_cluster_options(parser)
    add_restore_options(parser)
    return parser


def dtls_configs(
    config: ServerConfig,
    psk_store: PskStore,
    trust_store: TrustStore,
    client_auth: str | None = None,
) -> tuple[DtlsConfig, DtlsConfig]:
    """The DTLS settings of the extended and of the plugtest endpoints, from the properties.

    They differ in the client authentication default, WANTED and NEEDED (inventory §1.3);
    *client_auth* (--client-auth), else DTLS.CLIENT_AUTHENTICATION_MODE, sets both. Each has
    its own session cache (see ExtendedServer.plugtest_dtls).
    """
    mode = client_auth or config.dtls_client_auth
    extended = DtlsConfig(
        psk_store,
        cipher_suites=config.dtls_suites,
        certificate=demo_server_credentials(),
        cid_length=config.dtls_cid_length,  # -1: DtlsConfig turns CID off
        extended_master_secret_mode=ExtendedMasterSecretMode(
            config.dtls_extended_master_secret_mode
        ),
        client_auth=ClientAuth(mode or ClientAuth.WANTED.value),
        trust_store=trust_store,
        record_size_limit=config.dtls_record_size_limit,
    )
    plugtest = dataclasses.replace(
        extended,
        client_auth=ClientAuth(mode or ClientAuth.NEEDED.value),
        session_cache=SessionCache(),
    )
    return extended, plugtest


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"extserver: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    # The README's --dtls-cluster "---;..." value starts with dashes (cluster/options.py).
    args = build_parser().parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        cluster = cluster_config(args)
        restore = restore_config(args)
    except (ClusterOptionError, HandoverOptionError) as error:
        return fail(str(error), EXIT_USAGE)
    if restore is not None and not args.dtls:
        return fail("--k8s-restore and --local-restore hand over DTLS connections: drop --no-dtls")
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = ServerConfig()
    try:
        path = args.config or Path(DEFAULT_FILE)
        if args.config is not None or path.exists():
            config.load(path)
        if args.coap_port is not None:
            config.coap_port = args.coap_port
        if args.plugtest_port is not None:
            config.plugtest_port = args.plugtest_port
        config.validate("command line")
        psk_store = PskStore()
        if args.psk_file is not None:
            psk_store = PskStore.from_file(args.psk_file)
        notify_interval = parse_duration(args.notify_interval)
        if notify_interval < 0.005:
            raise ConfigError("--notify-interval must be at least 5ms")
        store = store_settings(args)
    except OSError as error:
        return fail(f"cannot read {args.psk_file}: {error.strerror}", EXIT_USAGE)
    except (ConfigError, PskFileError) as error:
        return fail(f"{error}", EXIT_USAGE)
    try:
        trust_store = TrustStore.demo()
        if args.trust_store is not None:
            trust_store = TrustStore.from_pem_file(args.trust_store)
    except OSError as error:
        return fail(f"cannot read {args.trust_store}: {error.strerror}", EXIT_USAGE)
    except ValueError as error:
        return fail(f"--trust-store: {error}", EXIT_USAGE)
    trust_store.trust_all = args.trust_all
    dtls_config, plugtest_dtls = dtls_configs(config, psk_store, trust_store, args.client_auth)
    interfaces = InterfaceSelection(
        loopback=args.loopback,
        external=args.external,
        ipv4=args.ipv4,
        ipv6=args.ipv6,
        patterns=[p for p in args.interfaces_pattern.split(",") if p],
    )
    server = ExtendedServer(
        config,
        interfaces,
        plugtest=args.plugtest,
        benchmark=args.benchmark,
        diagnose=args.diagnose,
        notify_interval=notify_interval,
        echo_delay=args.echo_delay,
        dtls=dtls_config if args.dtls else None,
        plugtest_dtls=plugtest_dtls if args.dtls else None,
        dtls_only=args.dtls_only,
        cluster=cluster,
        dtls_wildcard=restore is not None,
        tcp=args.tcp,
        tls=(
            demo_tls_server_context(args.client_auth or "WANTED", args.trust_store)
            if args.tcp
            else None
        ),
    )
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        uris = server.start(loop)
    except StartupError as error:
        loop.close()
        return fail(str(error))
    print(f"extserver {__version__}" + (" (benchmark enabled)" if args.benchmark else ""))
    for uri in uris:
        print(f"  {uri}")
    sys.stdout.flush()
    if store is not None:  # before the loop runs: no datagram is handled before
        restore_from_file(server, store)
    handover: RestoreServer | None = None
    if restore is not None:
        try:
            handover = start_handover(server, restore, loop)
        except StartupError as error:
            server.close()
            loop.close()
            return fail(str(error))
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # Every way to stop (signals, the console's exit, POST /shutdown: a SIGTERM) ends here.
    console = ServerConsole(server, stop.set)
    stdin = StdinConsole(console.execute, loop)
    stdin.start()
    try:
        loop.run_until_complete(stop.wait())
    finally:
        stdin.close()
        if console.saved is not None:
            logger.warning("the DTLS connections of the console's save were not loaded: lost")
        if handover is not None:
            loop.run_until_complete(handover.close())
        if store is not None:
            save_to_file(server, store)
        server.close()
        loop.close()
    return 0


#: /alive turns 503 this long after /restore was served (inventory §5.10)
ALIVE_AFTER_HANDOVER = 4.0
#: k8s cluster: the restore waits for the cluster to be ready, at most this long (§5.9)
CLUSTER_READY_WAIT = 60.0


async def _cluster_ready(server: ExtendedServer) -> None:
    for _ in range(int(CLUSTER_READY_WAIT / 0.1)):
        if server.cluster_ready():
            return
        await asyncio.sleep(0.1)
    logger.warning("the cluster is not ready after %gs; restoring anyway", CLUSTER_READY_WAIT)


def start_handover(
    server: ExtendedServer, restore: RestoreConfig, loop: asyncio.AbstractEventLoop
) -> RestoreServer:
    """--k8s-restore / --local-restore + --other-restore (server/handover.py): download the
    other server's DTLS connections, with our DTLS endpoints stopped meanwhile (no datagram is
    handled before the connections are in), then serve /restore ourselves. /ready is false
    until the restore is done (or given up), and again from the moment a /restore stops our
    DTLS endpoints; /alive follows 4 s after it was served. Raises StartupError."""
    restored = False

    def on_served() -> None:
        if server.monitor is not None:
            loop.call_later(ALIVE_AFTER_HANDOVER, setattr, server.monitor, "alive", False)

    handover = RestoreServer(
        lambda: restore_payload(server.save_dtls(), restore.max_age), on_served
    )
    server.ready_checks.append(lambda: restored and not handover.handing_over)
    for transport in server.dtls_transports():
        transport.stop()
    try:
        if server.cluster is not None:
            loop.run_until_complete(_cluster_ready(server))
        loop.run_until_complete(
            restore_from_peer(
                restore,
                lambda saved: server.load_dtls(saved.aged_until(time.time()), restore.max_age),
                cluster=server.cluster is not None,
            )
        )
    finally:
        for transport in server.dtls_transports():
            transport.resume()  # (load_dtls resumed them already after a restore)
    restored = True
    try:
        loop.run_until_complete(handover.start(restore.local.host, restore.local.port))
    except OSError as error:
        raise StartupError(
            f"cannot listen for /restore on {restore.local}: {error.strerror or error}"
        ) from None
    print(f"  https://{restore.local}/restore (graceful handover)")
    return handover


if __name__ == "__main__":
    sys.exit(main())

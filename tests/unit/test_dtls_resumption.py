"""Session resumption by session id (RFC 5246 §7.3) with the extended master secret rules of
RFC 7627 §5.3 and the four DTLS.EXTENDED_MASTER_SECRET_MODEs (inventory §6.3), sans-IO (our
client and our server handshake objects), and the session cache."""

from __future__ import annotations

import pytest
from test_dtls_client_auth import ECDSA_CCM8, Pair, check_keys_match, server_config

from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls._record import parse_datagram
from extplugtest.dtls.handshake_client import ClientHandshake, ClientSession
from extplugtest.dtls.handshake_header import AlertDescription, iter_fragments
from extplugtest.dtls.handshake_server import ClientAuth, HandshakeFailure
from extplugtest.dtls.handshake_server import ExtendedMasterSecretMode as Ems
from extplugtest.dtls.messages import ExtendedMasterSecretExtension, ServerHello
from extplugtest.dtls.pki import demo_client_credentials
from extplugtest.dtls.session_cache import CachedSession, SessionCache

PSK = (b"Client_identity", b"secretPSK")


def psk_client(resume: ClientSession | None = None, **options) -> ClientHandshake:
    return ClientHandshake(*PSK, resume=resume, **options)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_psk_session_is_resumed_with_the_abbreviated_handshake():
    config = server_config()
    first_client, first_server = Pair(config, psk_client()).run()
    assert len(config.session_cache) == 1 and not first_server.resumed
    pair = Pair(config, psk_client(resume=first_client), read_cid=b"newcid")
    client, server = pair.run()
    assert client.resumed and server.resumed
    assert server.session_id == first_server.session_id == client.session_id
    assert server.identity == b"Client_identity"
    check_keys_match(client, server)
    # New randoms: new keys, and the CID of the new ClientHello (RFC 9146 keeps per handshake)
    assert client.cipher.seal(1, 5, 23, b"x") != first_client.cipher.seal(1, 5, 23, b"x")
    assert client.write_cid == b"newcid" and server.read_cid == b"newcid"
    # ServerHello, ChangeCipherSpec and Finished in one datagram; nothing to resend after
    assert len(pair.server_datagrams) == 2  # the HelloVerifyRequest and that flight
    assert pair.server is not None and pair.server.flight == []
    assert config.session_cache.counters.resumed == 1


def test_resumed_x509_session_keeps_the_client_principal():
    config = server_config(client_auth=ClientAuth.NEEDED)
    credentials = demo_client_credentials()
    first, _ = Pair(
        config, ClientHandshake(cipher_suites=ECDSA_CCM8, certificate=credentials)
    ).run()
    # Resumption asks for no certificate: the original handshake authenticated the client.
    client, server = Pair(config, ClientHandshake(cipher_suites=ECDSA_CCM8, resume=first)).run()
    assert server.resumed and server.identity == b"O=extplugtest demo,CN=cf-client"
    assert client.peer == first.peer == "O=extplugtest demo,CN=cf-server"


def test_unknown_session_id_gets_a_full_handshake():
    first, _ = Pair(server_config(), psk_client()).run()
    client, server = Pair(server_config(), psk_client(resume=first)).run()  # another cache
    assert not client.resumed and not server.resumed
    assert client.session_id != first.session_id


def test_session_of_another_suite_is_not_resumed():
    config = server_config()
    first, _ = Pair(config, psk_client()).run()
    other = (cs.TLS_PSK_WITH_AES_128_GCM_SHA256,)
    handshake = psk_client(resume=first, cipher_suites=other)
    assert handshake.cipher_suites[0] is first.suite  # RFC 5246 §7.4.1.2: it is offered
    config.cipher_suites = other  # ... but the server no longer allows it
    client, _ = Pair(config, handshake).run()
    assert not client.resumed and client.suite is cs.TLS_PSK_WITH_AES_128_GCM_SHA256


def test_ems_session_offered_without_ems_is_aborted(monkeypatch):
    """RFC 7627 §5.3: the server MUST abort an abbreviated handshake then."""
    config = server_config()
    first, _ = Pair(config, psk_client()).run()
    assert first.extended_master_secret
    monkeypatch.setattr(
        "extplugtest.dtls.handshake_client.ExtendedMasterSecretExtension", _NotOffered
    )
    with pytest.raises(HandshakeFailure) as failure:
        Pair(config, psk_client(resume=first)).run()
    assert failure.value.alert is AlertDescription.HANDSHAKE_FAILURE


class _NotOffered(ExtendedMasterSecretExtension):
    """An unknown extension in place of extended_master_secret (type 0xFAFA, GREASE-like)."""

    TYPE = 0xFAFA


def test_non_ems_session_is_not_cached_while_ems_is_enabled(monkeypatch):
    monkeypatch.setattr(
        "extplugtest.dtls.handshake_client.ExtendedMasterSecretExtension", _NotOffered
    )
    config = server_config()
    _, server = Pair(config, psk_client()).run()
    assert not server.extended_master_secret and len(config.session_cache) == 0


def test_without_ems_configured_sessions_resume_without_it():
    config = server_config(extended_master_secret_mode=Ems.NONE)
    first, _ = Pair(config, psk_client()).run()
    assert not first.extended_master_secret and len(config.session_cache) == 1
    client, server = Pair(config, psk_client(resume=first)).run()
    assert client.resumed and not server.extended_master_secret


# -- DTLS.EXTENDED_MASTER_SECRET_MODE ----------------------------------------------------------


@pytest.fixture
def no_ems_offered(monkeypatch):
    """Our client without the extended_master_secret extension in its ClientHello."""
    monkeypatch.setattr(
        "extplugtest.dtls.handshake_client.ExtendedMasterSecretExtension", _NotOffered
    )


@pytest.mark.parametrize(
    ("mode", "session_id_length", "cached"),
    [(Ems.NONE, 32, True), (Ems.OPTIONAL, 32, True), (Ems.ENABLED, 0, False)],
)
def test_client_without_ems_gets_a_session_id_unless_enabled(
    no_ems_offered, mode, session_id_length, cached
):
    """ENABLED (the default): "If the client does not offer EMS, the server does not assign a
    session id, so that session cannot be resumed"; NONE and OPTIONAL assign one."""
    config = server_config(extended_master_secret_mode=mode)
    client, server = Pair(config, psk_client()).run()
    assert not client.extended_master_secret and not server.extended_master_secret
    assert len(server.session_id) == len(client.session_id) == session_id_length
    assert (len(config.session_cache) == 1) == cached
    check_keys_match(client, server)


def test_default_mode_is_enabled():
    assert server_config().extended_master_secret_mode is Ems.ENABLED


def test_required_refuses_a_client_without_ems(no_ems_offered):
    config = server_config(extended_master_secret_mode=Ems.REQUIRED)
    with pytest.raises(HandshakeFailure) as failure:
        Pair(config, psk_client()).run()
    assert failure.value.alert is AlertDescription.HANDSHAKE_FAILURE
    assert len(config.session_cache) == 0


@pytest.mark.parametrize("mode", [Ems.OPTIONAL, Ems.ENABLED, Ems.REQUIRED])
def test_client_with_ems_uses_it_in_every_mode_but_none(mode):
    config = server_config(extended_master_secret_mode=mode)
    client, server = Pair(config, psk_client()).run()
    assert client.extended_master_secret and server.extended_master_secret
    assert len(server.session_id) == 32 and len(config.session_cache) == 1
    resumed, _ = Pair(config, psk_client(resume=client)).run()
    assert resumed.resumed


def test_none_does_not_answer_the_extension():
    config = server_config(extended_master_secret_mode=Ems.NONE)
    pair = Pair(config, psk_client())
    client, server = pair.run()
    assert not client.extended_master_secret and not server.extended_master_secret
    record = parse_datagram(pair.server_datagrams[1], cid_length=6)[0]  # after the HVR
    ((_, body),) = list(iter_fragments(record.fragment))
    assert ServerHello.decode(body).extension(ExtendedMasterSecretExtension) is None


def test_optional_resumes_a_session_without_ems(no_ems_offered):
    config = server_config(extended_master_secret_mode=Ems.OPTIONAL)
    first, _ = Pair(config, psk_client()).run()
    client, server = Pair(config, psk_client(resume=first)).run()
    assert client.resumed and server.resumed and not server.extended_master_secret


def test_enabled_sessions_without_ems_are_not_resumed(no_ems_offered):
    """The client has no session id to offer: the next handshake is a full one."""
    config = server_config()
    first, _ = Pair(config, psk_client()).run()
    client, server = Pair(config, psk_client(resume=first)).run()
    assert not client.resumed and not server.resumed and server.session_id == b""


def test_only_enabled_and_required_make_ems_a_condition_of_caching():
    """DtlsConfig.extended_master_secret: what the connector checks for restored sessions."""
    assert [server_config(extended_master_secret_mode=m).extended_master_secret for m in Ems] == [
        False, False, True, True,
    ]  # fmt: skip


def test_client_aborts_when_the_server_changes_the_ems_state():
    """RFC 7627 §5.3 on the client: a resumed session must keep its EMS state."""
    config = server_config()
    first, _ = Pair(config, psk_client()).run()
    cached = config.session_cache.get(first.session_id)
    assert cached is not None
    # The server's cache claims the session had no EMS: it resumes without the extension.
    config.session_cache.put(
        CachedSession(
            cached.session_id, cached.suite, cached.master_secret, False,
            cached.identity, None, cached.created,
        )
    )  # fmt: skip
    config.extended_master_secret_mode = Ems.NONE
    with pytest.raises(HandshakeFailure) as failure:
        Pair(config, psk_client(resume=first)).run()
    assert failure.value.alert is AlertDescription.HANDSHAKE_FAILURE


def test_wrong_master_secret_fails_the_resumption():
    """A client that offers a known id without knowing its master secret."""
    config = server_config()
    first, _ = Pair(config, psk_client()).run()
    forged = ClientSession(
        first.suite, first.cipher, b"", b"", True, 1, session_id=first.session_id,
        master_secret=bytes(48),
    )  # fmt: skip
    with pytest.raises(HandshakeFailure) as failure:
        Pair(config, psk_client(resume=forged)).run()
    # the server's Finished, sealed with keys from the real master secret, does not open
    assert failure.value.alert is AlertDescription.BAD_RECORD_MAC
    assert config.session_cache.get(first.session_id) is not None  # not invalidated by them


# -- the cache --------------------------------------------------------------------------------


def cached(session_id: bytes, created: float = 0.0) -> CachedSession:
    suite = cs.TLS_PSK_WITH_AES_128_CCM_8
    return CachedSession(session_id, suite, bytes(48), True, b"id", None, created)


def test_cache_evicts_the_least_recently_used_and_counts():
    cache = SessionCache(max_sessions=2, clock=Clock())
    cache.put(cached(b"a"))
    cache.put(cached(b"b"))
    assert cache.get(b"a") is not None  # now "b" is the least recently used
    cache.put(cached(b"c"))
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    assert cache.counters.evicted == 1 and len(cache) == 2
    assert cache.counters.misses == 1 and cache.counters.hits == 2


def test_cache_entries_expire():
    clock = Clock()
    cache = SessionCache(lifetime=24 * 3600, clock=clock)
    cache.put(cached(b"a", created=clock.now))
    clock.now += 24 * 3600 - 1
    assert cache.get(b"a") is not None
    clock.now += 2
    assert cache.get(b"a") is None and cache.counters.expired == 1 and len(cache) == 0


def test_cache_ignores_empty_session_ids_and_rejects_a_zero_size():
    cache = SessionCache()
    cache.put(cached(b""))
    assert len(cache) == 0
    with pytest.raises(ValueError):
        SessionCache(max_sessions=0)

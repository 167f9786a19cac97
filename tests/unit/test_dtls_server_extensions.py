"""What the server's hello answers besides the key exchange, sans-IO (our client and our server
handshake objects, as in test_dtls_client_auth), plus one run through the connector:

* record_size_limit (RFC 8449) is echoed with our own limit (DTLS.RECORD_SIZE_LIMIT, default
  2^14), and max_fragment_length (RFC 6066 §4) only when there is no record_size_limit
  (inventory §6.3); the negotiated limit is kept in the Session, and our flight keeps to it;
* DTLS.CONNECTION_ID_LENGTH -1: the client's connection_id extension is ignored (§6.2).
"""

from __future__ import annotations

import pytest
from test_dtls_client import connect, serve
from test_dtls_client_auth import ECDSA_CCM8, Pair, check_keys_match, server_config

from extplugtest.dtls._record import parse_datagram
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_header import HandshakeType, iter_fragments
from extplugtest.dtls.handshake_server import DtlsConfig
from extplugtest.dtls.messages import (
    MAX_PLAINTEXT,
    ConnectionIdExtension,
    ContentType,
    Extension,
    MaxFragmentLengthExtension,
    RecordSizeLimitExtension,
    ServerHello,
)
from extplugtest.dtls.pki import demo_client_credentials

PSK = (b"Client_identity", b"secretPSK")


def server_hello(pair: Pair) -> ServerHello:
    """The ServerHello of the pair's last handshake (the first record after the HVR)."""
    record = parse_datagram(pair.server_datagrams[1], cid_length=len(pair.read_cid))[0]
    ((header, body),) = list(iter_fragments(record.fragment))
    assert header.msg_type == HandshakeType.SERVER_HELLO
    return ServerHello.decode(body)


def size_extensions(hello: ServerHello) -> tuple[Extension, ...]:
    return tuple(
        ext
        for ext in hello.extensions
        if isinstance(ext, RecordSizeLimitExtension | MaxFragmentLengthExtension)
    )


def test_without_either_extension_nothing_is_answered():
    pair = Pair(server_config(), ClientHandshake(*PSK))
    _, server = pair.run()
    assert size_extensions(server_hello(pair)) == ()
    assert server.record_size_limit == MAX_PLAINTEXT


@pytest.mark.parametrize(("own", "answered"), [(None, MAX_PLAINTEXT), (1000, 1000), (64, 64)])
def test_record_size_limit_is_answered_with_our_limit(offer, own, answered):
    offer(RecordSizeLimitExtension(256))
    pair = Pair(server_config(record_size_limit=own), ClientHandshake(*PSK))
    client, server = pair.run()
    assert size_extensions(server_hello(pair)) == (RecordSizeLimitExtension(answered),)
    assert server.record_size_limit == 256  # what the client accepts from us
    check_keys_match(client, server)


def test_record_size_limit_above_2_14_means_2_14(offer):
    offer(RecordSizeLimitExtension(0xFFFF))
    _, server = Pair(server_config(), ClientHandshake(*PSK)).run()
    assert server.record_size_limit == MAX_PLAINTEXT


@pytest.mark.parametrize("code", [1, 2, 3, 4])
def test_max_fragment_length_alone_is_echoed(offer, code):
    offer(MaxFragmentLengthExtension(code))
    pair = Pair(server_config(), ClientHandshake(*PSK))
    _, server = pair.run()
    assert size_extensions(server_hello(pair)) == (MaxFragmentLengthExtension(code),)
    assert server.record_size_limit == 1 << (8 + code)


def test_max_fragment_length_is_ignored_next_to_a_record_size_limit(offer):
    """RFC 8449 §5: a server that supports record_size_limit ignores max_fragment_length."""
    offer(MaxFragmentLengthExtension(1), RecordSizeLimitExtension(2000))
    pair = Pair(server_config(), ClientHandshake(*PSK))
    _, server = pair.run()
    assert size_extensions(server_hello(pair)) == (RecordSizeLimitExtension(MAX_PLAINTEXT),)
    assert server.record_size_limit == 2000


@pytest.mark.parametrize(
    "extension", [MaxFragmentLengthExtension(1), RecordSizeLimitExtension(200)], ids=["mfl", "rsl"]
)
def test_certificate_flight_keeps_to_the_limit(offer, extension):
    """RFC 6066 §4: after the ServerHello every fragment keeps to the negotiated length; the
    certificate chain is longer than that, so it comes in fragments the client reassembles."""
    limit = 512 if isinstance(extension, MaxFragmentLengthExtension) else 200
    offer(extension)
    pair = Pair(
        server_config(),
        ClientHandshake(cipher_suites=ECDSA_CCM8, certificate=demo_client_credentials()),
    )
    client, server = pair.run()
    check_keys_match(client, server)
    records = [r for d in pair.server_datagrams[1:] for r in parse_datagram(d, cid_length=6)]
    handshake = [r for r in records if r.content_type == ContentType.HANDSHAKE and r.epoch == 0]
    assert len(handshake) > 5  # the messages, and fragments of the certificate
    assert max(len(record.fragment) for record in handshake) <= limit


def test_resumption_answers_the_limit_again(offer):
    offer(RecordSizeLimitExtension(300))
    config = server_config()
    first, _ = Pair(config, ClientHandshake(*PSK)).run()
    pair = Pair(config, ClientHandshake(*PSK, resume=first))
    client, server = pair.run()
    assert client.resumed and server.resumed and server.record_size_limit == 300
    assert size_extensions(server_hello(pair)) == (RecordSizeLimitExtension(MAX_PLAINTEXT),)


@pytest.mark.parametrize("limit", [63, MAX_PLAINTEXT + 1])
def test_own_limit_out_of_range_is_refused(limit):
    with pytest.raises(ValueError, match="record size limit"):
        server_config(record_size_limit=limit)


# -- DTLS.CONNECTION_ID_LENGTH -1 ---------------------------------------------------------------


def test_cid_length_minus_one_ignores_the_clients_extension():
    config = server_config(cid_length=-1)
    assert config.cid_length == 0 and not config.cid_enabled  # what the connector reads
    pair = Pair(config, ClientHandshake(*PSK, cid=b"clientcid"), read_cid=b"")
    client, server = pair.run()
    assert server_hello(pair).extension(ConnectionIdExtension) is None
    assert not server.cid_negotiated and server.write_cid == b"" and server.read_cid == b""
    assert client.write_cid == b""  # plain records both ways
    check_keys_match(client, server)


def test_cid_length_zero_still_supports_the_extension():
    pair = Pair(server_config(cid_length=0), ClientHandshake(*PSK, cid=b"clientcid"), read_cid=b"")
    _, server = pair.run()
    assert server_hello(pair).extension(ConnectionIdExtension) == ConnectionIdExtension(b"")
    assert server.cid_negotiated and server.write_cid == b"clientcid"


def test_cid_disabled_through_the_connector():
    """The connector keeps its cid_length 0; a client offering a CID gets plain records and a
    working connection."""
    for transport in serve(DtlsConfig(PskStore(), cid_length=-1)):
        sock, session = connect(transport.local_address, cid=b"abcdef")
        assert session.write_cid == b"" and session.read_cid == b"abcdef"
        request = bytes((0x40, 0x01, 0x00, 0x07, 0xB4)) + b"test"  # CON GET /test
        sock.send(session.cipher.seal(1, session.next_write_seq, 23, request))
        content_type, plaintext = session.cipher.open(sock.recv(4096))
        assert content_type == 23 and plaintext[1] == 0x45  # 2.05 Content
        sock.close()

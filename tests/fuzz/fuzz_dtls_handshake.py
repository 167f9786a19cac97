#!/usr/bin/env python3
"""atheris fuzz target for the DTLS handshake decoders and reassembly
(``extplugtest.dtls.handshake_header``, ``messages``, ``reassembly``).

Run it as ``python tests/fuzz/fuzz_dtls_handshake.py -atheris_runs=N [libFuzzer flags]
[CORPUS_DIR ...]``; ``--seed-corpus=DIR`` writes valid inputs into DIR and fuzzes with it.

The first input byte picks what the rest is fed to:

* ``RECORD`` (0): the plaintext of handshake records (split by ``iter_fragments``) into one
  ``Reassembler``, each complete message then into ``decode_handshake`` in every decoding
  context; the input is cut into several "records" by the second byte;
* any other value: one decoder directly (every message type and context, ChangeCipherSpec,
  Alert).

The oracle, for every input:

* decoders return a message or raise ``DecodeError`` (with an ``AlertDescription``);
  anything else is a crash;
* a decoded message encodes, and its encoding decodes to an equal message;
* the reassembler never raises, counts every fragment in exactly one outcome, keeps its
  byte budget and window once the complete messages are popped, and hands out messages in
  message_seq order with the length their headers announced.

The modules are pure Python, so atheris's instrumentation sees every branch. This module
imports neither atheris nor the package at import time, so unit tests can reuse ``check``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

RECORD = 0
#: Bounds used for the fuzzed reassembler: small, so that they are reached.
MAX_MESSAGES = 4
MAX_BYTES = 600
MAX_MESSAGE_LENGTH = 400

#: name -> decoder; input byte N > 0 selects DECODER_NAMES[(N - 1) % len(DECODER_NAMES)].
_decoders: dict[str, Callable[[bytes], Any]] = {}
DECODER_NAMES: list[str] = []
_mods: dict[str, Any] = {}


def _load() -> None:
    if _mods:
        return
    from extplugtest.dtls import handshake_header, messages, reassembly
    from extplugtest.dtls.ciphersuites import KeyExchange

    _mods.update(header=handshake_header, messages=messages, reassembly=reassembly)
    m = messages
    _decoders.update(
        client_hello=m.ClientHello.decode,
        server_hello=m.ServerHello.decode,
        hello_verify_request=m.HelloVerifyRequest.decode,
        certificate=m.Certificate.decode,
        certificate_rpk=lambda b: m.Certificate.decode(b, m.CertificateType.RAW_PUBLIC_KEY),
        certificate_request=m.CertificateRequest.decode,
        server_hello_done=m.ServerHelloDone.decode,
        certificate_verify=m.CertificateVerify.decode,
        finished=m.Finished.decode,
        change_cipher_spec=m.ChangeCipherSpec.decode,
        alert=m.Alert.decode,
    )
    for kx in KeyExchange:
        _decoders[f"ske_{kx.name}"] = lambda b, kx=kx: m.ServerKeyExchange.decode(b, kx)
        _decoders[f"cke_{kx.name}"] = lambda b, kx=kx: m.ClientKeyExchange.decode(b, kx)
    DECODER_NAMES.extend(_decoders)


def selector(name: str) -> int:
    """The first input byte that feeds the rest to the named decoder."""
    _load()
    return 1 + DECODER_NAMES.index(name)


def _round_trip(decode: Callable[[bytes], Any], data: bytes) -> None:
    DecodeError = _mods["header"].DecodeError
    try:
        message = decode(data)
    except DecodeError as exc:
        assert isinstance(exc.alert, _mods["header"].AlertDescription), exc.alert
        return
    again = decode(message.encode())
    assert again == message, f"{message!r} re-decoded as {again!r}"


def _contexts(msg_type: int) -> list[Callable[[bytes], Any]]:
    m = _mods["messages"]
    from extplugtest.dtls.ciphersuites import KeyExchange

    if msg_type in (m.HandshakeType.SERVER_KEY_EXCHANGE, m.HandshakeType.CLIENT_KEY_EXCHANGE):
        return [
            lambda b, kx=kx: m.decode_handshake(msg_type, b, key_exchange=kx) for kx in KeyExchange
        ]
    if msg_type == m.HandshakeType.CERTIFICATE:
        return [
            lambda b: m.decode_handshake(msg_type, b),
            lambda b: m.decode_handshake(msg_type, b, certificate_type=2),
        ]
    return [lambda b: m.decode_handshake(msg_type, b)]


def _check_records(data: bytes) -> None:
    header_mod, reassembly = _mods["header"], _mods["reassembly"]
    if not data:
        return
    step = data[0] or 1  # the "record" size
    stream = data[1:]
    reassembler = reassembly.Reassembler(
        0,
        max_messages=MAX_MESSAGES,
        max_bytes=MAX_BYTES,
        max_message_length=MAX_MESSAGE_LENGTH,
    )
    expected_seq = 0
    fragments = 0
    for pos in range(0, len(stream), step):
        record = stream[pos : pos + step]
        try:
            parsed = list(header_mod.iter_fragments(record))
        except header_mod.DecodeError:
            parsed = []  # (a real record layer drops the rest of the record)
        for header, fragment in parsed:
            reassembler.add(header, fragment)
            fragments += 1
        while (message := reassembler.pop()) is not None:
            assert message.message_seq == expected_seq
            expected_seq += 1
            wire = message.to_bytes()
            ((header, body),) = header_mod.iter_fragments(wire)
            assert header.length == len(message.body) and body == message.body
            for decode in _contexts(message.msg_type):
                _round_trip(decode, message.body)
        # Only a whole next message may exceed the budget, and it has just been popped.
        assert reassembler.buffered_bytes <= MAX_BYTES, reassembler.buffered_bytes
        assert reassembler.buffered_messages <= MAX_MESSAGES
    stats = reassembler.stats
    outcomes = (
        stats.accepted + stats.duplicates + stats.old + stats.too_far + stats.too_large
        + stats.no_space + stats.inconsistent
    )  # fmt: skip
    assert stats.fragments == fragments == outcomes, stats
    assert reassembler.next_seq == expected_seq


def check(data: bytes) -> None:
    """The oracle; raises AssertionError (or whatever leaks) on a finding."""
    _load()
    if not data:
        return
    selector, payload = data[0], data[1:]
    if selector == RECORD:
        _check_records(payload)
        return
    _round_trip(_decoders[DECODER_NAMES[(selector - 1) % len(DECODER_NAMES)]], payload)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    check(data)


def seeds() -> tuple[bytes, ...]:
    """Valid inputs that make a useful starting corpus."""
    _load()
    m = _mods["messages"]
    r = _mods["reassembly"]
    hello = m.ClientHello(
        m.DTLS_1_2,
        bytes(range(32)),
        b"",
        b"\x11" * 32,
        (0xC0A8, 0xC0AE, 0x00FF),
        (0,),
        (
            m.SupportedGroupsExtension((29, 23)),
            m.EcPointFormatsExtension((0,)),
            m.SignatureAlgorithmsExtension((0x0403,)),
            m.ExtendedMasterSecretExtension(),
            m.ConnectionIdExtension(b""),
            m.ClientCertificateTypeExtension((2, 0)),
            m.ServerNameExtension(((0, b"localhost"),)),
            m.RecordSizeLimitExtension(1024),
            m.UnknownExtension(35, b""),
        ),
    )
    server_hello = m.ServerHello(
        m.DTLS_1_2,
        bytes(32),
        b"\x01" * 32,
        0xC0A8,
        0,
        (m.ConnectionIdExtension(b"abcdef"), m.RenegotiationInfoExtension()),
    )
    flight = [hello, server_hello, m.ServerHelloDone(), m.Finished(bytes(12))]
    record = b"".join(m.encode_message(msg, seq) for seq, msg in enumerate(flight))
    fragmented = b"".join(r.fragment_message(1, 0, hello.encode(), 40)[::-1])
    params = m.EcdhParams(23, b"\x04" + bytes(64))
    ske = m.ServerKeyExchange(params=params, signature_algorithm=0x0403, signature=b"s")
    return (
        bytes([RECORD, 255]) + record,
        bytes([RECORD, 52]) + fragmented,  # 40-byte fragments + header, in reverse order
        bytes([RECORD, 13]) + m.encode_message(m.ClientKeyExchange(b"id"), 0),
        bytes([selector("client_hello")]) + hello.encode(),
        bytes([selector("server_hello")]) + server_hello.encode(),
        bytes([selector("certificate")]) + m.Certificate((b"\x30\x00",)).encode(),
        bytes([selector("certificate_request")]) + m.CertificateRequest().encode(),
        bytes([selector("alert")]) + m.Alert(2, 40).encode(),
        bytes([selector("ske_ECDHE_ECDSA")]) + ske.encode(),
        bytes([selector("cke_ECDHE_PSK")]) + m.ClientKeyExchange(b"", b"\x01").encode(),
    )


def main(argv: list[str]) -> None:
    import atheris
    from seed_corpus import fuzz  # beside this file (run as a script)

    with atheris.instrument_imports(include=["extplugtest.dtls"]):
        _load()
    fuzz(argv, seeds(), check, TestOneInput, (_round_trip, _check_records, check))


if __name__ == "__main__":
    main(sys.argv)

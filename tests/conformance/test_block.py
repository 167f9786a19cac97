"""TD_COAP_BLOCK (plugtest-spec.md §1.6): CB01-CB06.

Like the checker, the client sends Block1 uploads at SZX 2 (64 bytes; 1280 bytes = blocks 0..19)
and assembles Block2 responses; the checker's asserts apply to the assembled response, which
carries the LAST block's Block1/Block2 options. "TD" lines check the individual exchanges
(``resp.exchanges``) against the td-coap4 pass criteria.
"""

from __future__ import annotations

from extplugtest.coap.codes import Code, ContentFormat, Option, Type

TEXT = ContentFormat.TEXT_PLAIN
#: 1280 bytes = 20 lines of 64 bytes, lower case, so that /large-post's upper-casing shows.
UPLOAD = b"".join(
    (b"line %02d of the td_coap_block upload " % i).ljust(63, b".") + b"\n" for i in range(20)
)
assert len(UPLOAD) == 1280


def check_block2_sequence(resp, szx: int) -> None:
    """TD BLOCK_01/06: every block NUM=i, M=1 but the last, the SZX constant, full-size blocks."""
    size = 16 << szx
    for index, (_, answer) in enumerate(resp.exchanges):
        block = answer.block2
        last = index == len(resp.exchanges) - 1
        assert block is not None, f"block {index} without Block2"
        assert (block.num, block.szx) == (index, szx), f"block {index}: Block2 {block}"
        assert block.more != last, f"block {index}: M={int(block.more)}"
        if last:
            assert 0 < len(answer.payload) <= size, f"last block: {answer}"
        else:
            assert len(answer.payload) == size, f"block {index}: {answer}"


def check_block1_sequence(resp, final_code: int) -> None:
    """TD BLOCK_03/04/05: 2.31 Continue + Block1 (NUM=i, M=1) per intermediate block, then the
    final code with Block1 (NUM=n, M=0) (Block1 exchanges are those whose request has Block1)."""
    uploads = [(q, r) for q, r in resp.exchanges if q.has_option(Option.BLOCK1)]
    assert len(uploads) == 20, f"{len(uploads)} Block1 exchanges instead of 20"
    for index, (_, answer) in enumerate(uploads):
        block = answer.block1
        if index < len(uploads) - 1:
            assert answer.code == Code.CONTINUE, f"block {index}: {answer}"
            assert block is not None and (block.num, block.more) == (index, True), answer
        else:
            assert answer.code == final_code, f"final block: {answer}"
            assert block is not None and (block.num, block.more) == (index, False), answer
        assert block.szx <= 2, answer


def test_cb01_block2_early_negotiation(client):
    """CB01 (BLOCK_01): GET /large with Block2 NUM=0 M=0 SZX=2.

    Checker: has Block2, ACK, 2.05, Block2 == (szx 2, m 0, num n), non-empty, Content-Format.
    "The server must not shrink below 64 B."
    TD: every block NUM=i, M=1, SZX constant, payload exactly 64 B; the last M=0.
    """
    resp = client.request(Code.GET, "large", block2=(0, False, 2))
    assert resp.block2 is not None, resp
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp
    block = resp.block2
    assert (block.szx, block.more, block.num) == (2, False, len(resp.payload) // 64 - 1), resp
    assert resp.payload, resp
    assert resp.has_content_format(), resp
    assert len(resp.payload) == 1280, resp
    check_block2_sequence(resp, 2)


def test_cb02_block2_late_negotiation(client):
    """CB02 (BLOCK_02): GET /large without Block2.

    Checker: has Block2 (the server must start block-wise by itself), 2.05, non-empty,
    Content-Format. TD: the first response is 2.05 with Block2 NUM=0 M=1 and a full-size block.
    """
    resp = client.request(Code.GET, "large")
    assert resp.block2 is not None, f"/large not sent block-wise: {resp}"
    assert resp.code == Code.CONTENT, resp
    assert resp.payload, resp
    assert resp.has_content_format(), resp
    _, first = resp.exchanges[0]
    first_block = first.block2
    assert first_block is not None and (first_block.num, first_block.more) == (0, True), first
    assert len(first.payload) == first_block.size, first
    assert len(resp.payload) == 1280, resp


def test_cb03_block1_put(client):
    """CB03 (BLOCK_03): PUT /large-update, 1280 bytes in Block1 SZX 2.

    Checker: has Block1, ACK, 2.04, Block1 == (szx 2, m 0, num 19).
    TD: 2.31 Continue (M=1) with Block1 NUM=i per block; final 2.04 + Block1 NUM=n M=0.
    §1.2: GET /large-update then returns the stored body.
    """
    resp = client.request(Code.PUT, "large-update", content_format=TEXT, payload=UPLOAD)
    assert resp.block1 is not None, resp
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CHANGED, resp
    block = resp.block1
    assert (block.szx, block.more, block.num) == (2, False, 19), resp
    check_block1_sequence(resp, Code.CHANGED)

    stored = client.request(Code.GET, "large-update")
    assert stored.code == Code.CONTENT, stored
    assert stored.payload == UPLOAD, stored


def test_cb04_block1_post_create(client):
    """CB04 (BLOCK_04): POST /large-create, 1280 bytes in Block1 SZX 2.

    Checker: has Block1, 2.01, Block1 == (szx 2, m 0, num 19), Location-Path present.
    TD: intermediate 2.31 M=1; Location-Path ``large-create``, ``<seg>`` (no ``/``);
    optional GET on the new location → 2.05.
    """
    resp = client.request(Code.POST, "large-create", content_format=TEXT, payload=UPLOAD)
    assert resp.block1 is not None, resp
    assert resp.code == Code.CREATED, resp
    block = resp.block1
    assert (block.szx, block.more, block.num) == (2, False, 19), resp
    assert resp.location_path, f"no Location-Path: {resp}"
    check_block1_sequence(resp, Code.CREATED)
    location = resp.location_path
    assert len(location) == 2 and location[0] == "large-create", resp
    assert all(segment and "/" not in segment for segment in location), resp

    created = client.request(Code.GET, "/".join(location))
    assert created.code == Code.CONTENT, created
    assert created.payload == UPLOAD, created


def test_cb05_block1_block2_post(client):
    """CB05 (BLOCK_05): POST /large-post, 1280 bytes in Block1 SZX 2, answered block-wise.

    Checker: 2.04, Content-Format, non-empty (the upper-cased echo).
    TD: intermediate 2.31 M=1; the final block answered with 2.04 + Block1 (NUM=n, M=0) + Block2
    (NUM=0, M=1); follow-up POSTs with Block2 NUM=k, no Block1, no payload get 2.04 blocks, the
    last with M=0. §1.2: payload = request text upper-cased.
    """
    resp = client.request(Code.POST, "large-post", content_format=TEXT, payload=UPLOAD)
    assert resp.code == Code.CHANGED, resp
    assert resp.has_content_format(), resp
    assert resp.payload, resp
    assert resp.payload == UPLOAD.upper(), resp

    uploads = [(q, r) for q, r in resp.exchanges if q.has_option(Option.BLOCK1)]
    follow_ups = [(q, r) for q, r in resp.exchanges if not q.has_option(Option.BLOCK1)]
    for index, (_, answer) in enumerate(uploads[:-1]):
        assert answer.code == Code.CONTINUE, f"block {index}: {answer}"
    final = uploads[-1][1]
    assert final.code == Code.CHANGED, final
    assert final.block1 is not None and (final.block1.num, final.block1.more) == (19, False), final
    assert final.block2 is not None and (final.block2.num, final.block2.more) == (0, True), final
    assert follow_ups, "the response was not sent block-wise"
    for request, answer in follow_ups:
        assert not request.payload
        assert answer.code == Code.CHANGED, answer
    assert resp.block2 is not None and not resp.block2.more, resp


def test_cb06_block2_16_bytes(client):
    """CB06 (BLOCK_06): GET /large with Block2 NUM=0 M=0 SZX=0 (16-byte blocks).

    Checker: ACK, 2.05, Block2 == (szx 0, m 0, num 79), Content-Format, non-empty.
    TD: as BLOCK_01 with 16-byte blocks.
    """
    resp = client.request(Code.GET, "large", block2=(0, False, 0))
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp
    block = resp.block2
    assert block is not None, resp
    assert (block.szx, block.more, block.num) == (0, False, 79), resp
    assert resp.has_content_format(), resp
    assert resp.payload, resp
    check_block2_sequence(resp, 0)


def test_block1_out_of_order_is_4_08(client):
    """§3.3: "A transfer that starts at NUM≠0 must get 4.08" (reference: 4.08 "offset 320 doesn't
    match the current position 0!")."""
    request = client.make_request(
        Code.PUT, "large-update", content_format=TEXT, block1=(5, True, 2), payload=UPLOAD[:64]
    )
    resp = client.exchange(request)
    assert resp.code == Code.REQUEST_ENTITY_INCOMPLETE, resp

"""Real CoAP clients drive observe and block-wise transfers on the plugtest endpoint.

* libcoap ``coap-client-notls`` (4.3.x): observe ``/obs`` for a few seconds (``-s``), GET
  ``/large`` with 64-byte blocks (``-b 64``), PUT and POST bodies above 64 bytes with ``-b 64``
  (Block1, and Block2 for the /large-post answer).
* aiocoap (0.4.17): ``aiocoap-client`` GET ``/large``; an observation through the Python API.

The server runs with ``--notify-interval 200ms``; every client run is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

#: /large (plugtest-spec.md §1.2; californium-inventory.md §1.5): 5 blocks of 4 lines of 64 B.
LARGE = "".join(
    "/" + "-" * 61 + "\\\n"
    f"|                 RESOURCE BLOCK NO. {n} OF 5                   |\n"
    "|               [each line contains 64 bytes]                 |\n"
    "\\" + "-" * 61 + "/\n"
    for n in range(1, 6)
)
assert len(LARGE) == 1280
#: A body of 301 bytes (5 blocks of 64 B; the last one 45 B), lower case for /large-post.
BODY = "the quick brown fox jumps over the lazy dog; " * 6 + "and again.\n"
TIME = re.compile(r"\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def plugtest_uri(start_extserver) -> str:
    server = start_extserver("--notify-interval", "200ms")
    return f"coap://127.0.0.1:{server.plugtest_port}"


def upload(method: str, body: Path, uri: str) -> subprocess.CompletedProcess[str]:
    """``coap-client -m METHOD -b 64 -t 0 -f BODY URI``: a text/plain body in 64-byte blocks."""
    return coap_client("-m", method, "-b", "64", "-t", "0", "-f", str(body), uri)


def coap_client(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``coap-client-notls -B 5 ARGS`` (give up after 5 s without a response)."""
    exe = shutil.which("coap-client-notls") or "coap-client-notls"
    return subprocess.run(
        [exe, "-B", "5", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def aiocoap_client(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("aiocoap-client")
    command = str(exe) if exe.exists() else shutil.which("aiocoap-client") or "aiocoap-client"
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=30, check=False)


# -- libcoap -----------------------------------------------------------------------------------


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_observe_obs(plugtest_uri):
    """``coap-client -s 2 /obs``: the registration response plus notifications every 0.2 s.

    With ``-w`` every payload (an ``HH:mm:ss`` time) ends in a newline.
    """
    result = coap_client("-w", "-s", "2", f"{plugtest_uri}/obs")
    lines = [line for line in result.stdout.splitlines() if line]  # a final newline follows
    assert len(lines) >= 4, f"{len(lines)} payloads in 2 s; stderr:\n{result.stderr}"
    assert all(TIME.fullmatch(line) for line in lines), lines


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_observe_obs_non(plugtest_uri):
    """``coap-client -N -s 2 /obs-non``: NON registration, notifications keep coming."""
    result = coap_client("-w", "-N", "-s", "2", f"{plugtest_uri}/obs-non")
    lines = [line for line in result.stdout.splitlines() if line]  # a final newline follows
    assert len(lines) >= 4, f"{len(lines)} payloads in 2 s; stderr:\n{result.stderr}"
    assert all(TIME.fullmatch(line) for line in lines), lines


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_block2_get_large(plugtest_uri):
    """``coap-client -b 64 /large``: 20 blocks of 64 bytes, assembled to the 1280-byte text."""
    result = coap_client("-b", "64", f"{plugtest_uri}/large")
    assert result.stdout.removesuffix("\n") == LARGE, result.stderr


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_block2_get_large_16(plugtest_uri):
    """``coap-client -b 16 /large``: 80 blocks of 16 bytes (BLOCK_06's block size)."""
    result = coap_client("-b", "16", f"{plugtest_uri}/large")
    assert result.stdout.removesuffix("\n") == LARGE, result.stderr


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_block1_put_large_update(plugtest_uri, tmp_path):
    """``coap-client -m put -b 64 -t 0 -f body /large-update``, then GET returns the body."""
    body = tmp_path / "body.txt"
    body.write_text(BODY)
    put = coap_client(
        "-m", "put", "-b", "64", "-t", "0", "-f", str(body), f"{plugtest_uri}/large-update"
    )
    assert put.returncode == 0 and not put.stderr.strip(), put.stderr
    get = coap_client("-b", "64", f"{plugtest_uri}/large-update")
    assert get.stdout.removesuffix("\n") == BODY, get.stderr


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_block1_block2_post_large_post(plugtest_uri, tmp_path):
    """``coap-client -m post -b 64 -t 0 -f body /large-post``: the upper-cased body comes back
    block-wise (Block1 upload, Block2 download; BLOCK_05)."""
    body = tmp_path / "body.txt"
    body.write_text(BODY)
    post = coap_client(
        "-m", "post", "-b", "64", "-t", "0", "-f", str(body), f"{plugtest_uri}/large-post"
    )
    assert post.stdout.removesuffix("\n") == BODY.upper(), post.stderr


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_block1_post_large_create(plugtest_uri, tmp_path):
    """``coap-client -m post -b 64 -t 0 -f body /large-create`` creates a child (2.01, BLOCK_04);
    the listing of /large-create then names it."""
    body = tmp_path / "body.txt"
    body.write_text(BODY)
    post = coap_client(
        "-m", "post", "-b", "64", "-t", "0", "-f", str(body), f"{plugtest_uri}/large-create"
    )
    assert post.returncode == 0 and not post.stderr.strip(), post.stderr
    listing = coap_client("-b", "64", f"{plugtest_uri}/large-create")
    assert "</large-create/" in listing.stdout, listing.stdout + listing.stderr


# -- aiocoap -----------------------------------------------------------------------------------


@pytest.mark.requires_bin("aiocoap-client")
def test_aiocoap_client_get_large(plugtest_uri):
    """``aiocoap-client /large``: aiocoap follows the server's Block2 to the end."""
    result = aiocoap_client(f"{plugtest_uri}/large")
    assert result.returncode == 0, result.stderr
    assert result.stdout == LARGE


def test_aiocoap_api_observe_obs(plugtest_uri):
    """aiocoap's Python API: GET /obs Observe=0, three notifications within 10 s, then cancel."""
    import aiocoap

    async def observe() -> tuple[aiocoap.Message, list[aiocoap.Message]]:
        context = await aiocoap.Context.create_client_context()
        try:
            request = context.request(
                aiocoap.Message(code=aiocoap.GET, uri=f"{plugtest_uri}/obs", observe=0)
            )
            first = await asyncio.wait_for(request.response, 5)
            notifications: list[aiocoap.Message] = []

            async def collect() -> None:
                async for notification in request.observation:
                    notifications.append(notification)
                    if len(notifications) == 3:
                        return

            try:
                await asyncio.wait_for(collect(), 10)
            finally:
                request.observation.cancel()
            return first, notifications
        finally:
            await context.shutdown()

    first, notifications = asyncio.run(observe())
    assert first.code == aiocoap.CONTENT, first
    assert first.opt.observe is not None, first
    assert len(notifications) == 3
    for notification in notifications:
        assert notification.code == aiocoap.CONTENT, notification
        assert TIME.fullmatch(notification.payload.decode()), notification.payload


def test_aiocoap_api_block1_post_large_post(plugtest_uri):
    """aiocoap's Python API with 64-byte blocks: POST /large-post → the upper-cased body."""
    import aiocoap

    async def post() -> aiocoap.Message:
        context = await aiocoap.Context.create_client_context()
        try:
            message = aiocoap.Message(
                code=aiocoap.POST,
                uri=f"{plugtest_uri}/large-post",
                content_format=0,
                payload=BODY.encode(),
            )
            message.remote.maximum_block_size_exp = 2
            return await asyncio.wait_for(context.request(message).response, 20)
        finally:
            await context.shutdown()

    response = asyncio.run(post())
    assert response.code == aiocoap.CHANGED, response
    assert response.payload == BODY.upper().encode()

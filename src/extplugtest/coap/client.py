"""Requests the server sends itself (Californium's reverse requests and reverse observe).

``send`` gives every request a fresh MID and, if it has none, a random 8-byte token, sends it
(CON messages reliably, through the endpoint's ConfirmableSender) and returns a future for the
response, matched by peer and token (RFC 7252 §5.3.2): piggy-backed on the ACK, or a separate
response that is acknowledged here. With ``on_notification`` the entry stays after the first
response and later responses with the token (RFC 7641 notifications) go to the callback until
``cancel``. Unmatched CON responses, and notifications nobody waits for, are answered with RST,
which also ends an observation at the other side (RFC 7641 §3.6). Retransmitted CON responses
are acknowledged again but delivered once. Pending requests are bounded.

A response or notification that is the first of several Block2 blocks is completed before it
is delivered (RFC 7959 §2.4, §3.4): the further blocks are asked for with GETs of the same
URI, without Observe, at the block size the peer chose; the body is bounded like a request's.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from extplugtest.coap._codec import Message
from extplugtest.coap.blockwise import decode_block, encode_block
from extplugtest.coap.codes import Code, Option, Type
from extplugtest.coap.transmission import REJECTED, TIMED_OUT

if TYPE_CHECKING:
    from extplugtest.coap.endpoint import CoapEndpoint

RECENT_RESPONSES = 4096  # CON responses remembered to recognise retransmissions
MAX_BLOCK_BODY = 8192  # a block-wise answer's body (COAP.MAX_RESOURCE_BODY_SIZE)
MAX_COMPLETIONS = 1000  # block-wise answers being completed at once; more are dropped
BLOCK_TIMEOUT = 30.0  # for each further block


class _Pending:
    __slots__ = ("future", "mid", "on_notification", "request", "timer")

    def __init__(
        self,
        future: asyncio.Future[Message],
        mid: int,
        on_notification: Callable[[Message], None] | None,
        request: Message,
    ) -> None:
        self.future = future
        self.mid = mid
        self.on_notification = on_notification
        self.request = request  # for the GETs of further Block2 blocks
        self.timer: asyncio.TimerHandle | None = None


class OutgoingRequests:
    def __init__(self, endpoint: CoapEndpoint, max_pending: int = 10_000) -> None:
        self.endpoint = endpoint
        self.max_pending = max_pending
        self._pending: dict[tuple[tuple, bytes], _Pending] = {}
        self._recent: OrderedDict[tuple[tuple, int], None] = OrderedDict()
        self.sent = 0
        self.responses = 0
        self.duplicates = 0
        self.notifications = 0
        self.refused = 0
        self._completions: set[asyncio.Task[None]] = set()
        self.blocks_fetched = 0
        self.blocks_failed = 0  # block-wise answers that could not be completed (dropped)

    def counters(self) -> dict[str, int]:
        return {
            "send-requests": self.sent,
            "recv-responses matched": self.responses,
            "recv-duplicate responses": self.duplicates,
            "recv-notifications": self.notifications,
            "pending-requests": len(self._pending),
            "refused-requests": self.refused,
            "recv-blocks fetched": self.blocks_fetched,
            "recv-blocks failed": self.blocks_failed,
        }

    def send(
        self,
        message: Message,
        peer: tuple,
        timeout: float,
        on_notification: Callable[[Message], None] | None,
    ) -> asyncio.Future[Message]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        if len(self._pending) >= self.max_pending:
            self.refused += 1
            future.set_exception(OverflowError("too many requests pending"))
            return future
        if not message.token:
            message.token = os.urandom(8)
        key = (peer, message.token)
        if key in self._pending:
            self._drop(key)
        message.mid = self.endpoint.next_mid()
        pending = _Pending(future, message.mid, on_notification, message)
        pending.timer = loop.call_later(timeout, self._fail, key, TimeoutError("no response"))
        self._pending[key] = pending
        self.sent += 1
        if message.type == Type.CON:
            sent = self.endpoint.send_confirmable(
                message, peer, lambda outcome: self._transmission_done(key, outcome)
            )
            if not sent:
                self._fail(key, OverflowError("too many CON messages outstanding"))
        else:
            message.type = Type.NON
            self.endpoint.send_message(message, peer)
        return future

    def cancel(self, peer: tuple, token: bytes) -> None:
        self._drop((peer, token))

    def cancel_all(self) -> None:
        for task in list(self._completions):
            task.cancel()
        for key in list(self._pending):
            pending = self._drop(key)
            if pending is not None and not pending.future.done():
                pending.future.cancel()

    def on_response(self, message: Message, peer: tuple) -> None:
        if message.type == Type.ACK:  # piggy-backed: the ACK of our CON request
            self.endpoint.sender.complete(peer, message.mid, "ack")
        elif (peer, message.mid) in self._recent:  # a CON we took, again: ACK, handle once
            self.endpoint.send_bytes(Message(Type.ACK, 0, message.mid).to_bytes(), peer)
            self.duplicates += 1
            return
        key = (peer, message.token)
        pending = self._pending.get(key)
        if pending is None:
            if message.type == Type.CON or message.has_option(Option.OBSERVE):
                self.endpoint.send_bytes(Message(Type.RST, 0, message.mid).to_bytes(), peer)
                self.endpoint.engine.count("send-rejects")  # type: ignore[union-attr]
            else:
                self.endpoint.engine.count("recv-ignored")  # type: ignore[union-attr]
            return
        if message.type == Type.CON:
            self.endpoint.send_bytes(Message(Type.ACK, 0, message.mid).to_bytes(), peer)
            # only CONs that matched are remembered: unmatched ones (RST above) cannot push
            # the entries of real responses out of the bounded table
            self._recent[(peer, message.mid)] = None
            if len(self._recent) > RECENT_RESPONSES:
                self._recent.popitem(last=False)
        self.responses += 1
        block2 = message.uint_option(Option.BLOCK2)
        if (
            block2 is not None
            and decode_block(block2)[1]
            and 0x40 <= message.code < 0x60
            and not pending.request.has_option(Option.BLOCK2)  # not one of our follow-ups
        ):
            self._complete_later(key, pending, message, peer)
            return
        self._deliver(key, pending, message)

    def _deliver(self, key: tuple[tuple, bytes], pending: _Pending, message: Message) -> None:
        is_notification = message.has_option(Option.OBSERVE) and 0x40 <= message.code < 0x60
        if not pending.future.done():
            if pending.timer is not None:
                pending.timer.cancel()
                pending.timer = None
            pending.future.set_result(message)
            if pending.on_notification is None or not is_notification:
                self._drop(key)
            return
        if pending.on_notification is not None:
            self.notifications += 1
            if not is_notification:  # an error or a plain response ends the observation
                self._drop(key)
            pending.on_notification(message)

    # -- block-wise answers (RFC 7959 §2.4, §3.4) ------------------------------------------
    def _complete_later(
        self, key: tuple[tuple, bytes], pending: _Pending, first: Message, peer: tuple
    ) -> None:
        if len(self._completions) >= MAX_COMPLETIONS:
            self.blocks_failed += 1
            return
        task = asyncio.ensure_future(self._complete(key, pending, first, peer))
        self._completions.add(task)
        task.add_done_callback(self._completions.discard)

    async def _complete(
        self, key: tuple[tuple, bytes], pending: _Pending, first: Message, peer: tuple
    ) -> None:
        """Fetch the further blocks of *first*, then deliver it whole (or drop it, counted)."""
        try:
            body = await self._fetch_blocks(pending.request, first, peer)
        except (OSError, TimeoutError, OverflowError, ValueError):
            self.blocks_failed += 1
            if key in self._pending and not pending.future.done():
                self._fail(key, TimeoutError("a block of the response is missing"))
            return
        if self._pending.get(key) is not pending:  # cancelled or ended meanwhile
            return
        first.remove_option(Option.BLOCK2)
        first.payload = body
        self._deliver(key, pending, first)

    async def _fetch_blocks(self, request: Message, first: Message, peer: tuple) -> bytes:
        num, more, szx = decode_block(first.uint_option(Option.BLOCK2) or 0)
        if num != 0:
            raise ValueError("the first answer is not block 0")
        body = bytearray(first.payload)
        etag = first.option(Option.ETAG)  # RFC 7959 §2.4: every block of one representation
        while more:  # bounded: the body grows by a block each round, up to MAX_BLOCK_BODY
            follow = Message(Type.CON, Code.GET, 0, b"")
            for number, value in request.options:
                if number not in (Option.OBSERVE, Option.BLOCK2):
                    follow.add_option(number, value)
            follow.add_option(Option.BLOCK2, encode_block(num + 1, False, szx))
            answer = await self.send(follow, peer, BLOCK_TIMEOUT, None)
            block = answer.uint_option(Option.BLOCK2)
            if not 0x40 <= answer.code < 0x60 or block is None:
                raise ValueError(
                    f"block {num + 1}: answered {answer.code >> 5}.{answer.code & 31:02d}"
                )
            if answer.option(Option.ETAG) != etag:
                raise ValueError(f"block {num + 1} is of another representation (ETag)")
            got, more, got_szx = decode_block(block)
            # RFC 7959 §2.4: the server may answer with smaller blocks; the offset must fit
            if got_szx > szx or got * (16 << got_szx) != len(body):
                raise ValueError(f"block {got} (size {16 << got_szx}) does not follow")
            num, szx = got, got_szx
            body += answer.payload
            self.blocks_fetched += 1
            if len(body) > MAX_BLOCK_BODY:
                raise OverflowError("the block-wise answer is too large")
        return bytes(body)

    def _transmission_done(self, key: tuple[tuple, bytes], outcome: str) -> None:
        if outcome == REJECTED:
            self._fail(key, ConnectionResetError("request rejected with RST"))
        elif outcome == TIMED_OUT:
            self._fail(key, TimeoutError("no ACK after the retransmissions"))

    def _fail(self, key: tuple[tuple, bytes], error: Exception) -> None:
        pending = self._drop(key)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(error)

    def _drop(self, key: tuple[tuple, bytes]) -> _Pending | None:
        pending = self._pending.pop(key, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        return pending

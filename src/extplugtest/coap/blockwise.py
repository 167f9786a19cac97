"""Block-wise transfers on the server side (RFC 7959, RFC 9175 Request-Tag).

Block1 uploads are assembled atomically: every block but the last is answered with 2.31
Continue, and the handler runs once, on the whole body, when the last block arrives. Bodies are
bounded by MAX_RESOURCE_BODY_SIZE (beyond: 4.13 with Size1). Block2: a response larger than the
endpoint's maximum message size, or asked for in blocks, leaves block by block; the whole
response is kept for the follow-up requests (NUM > 0), which are answered from it without running
the handler again (a POST's follow-ups in particular). Transfers are keyed by peer, method, URI
path and query, and Request-Tag; both tables are bounded and expire after a lifetime.

A peer may take smaller messages than the endpoint's maximum: a DTLS peer that negotiated a
record size limit (RFC 8449, RFC 6066 max_fragment_length) receives each message in one record
of at most that many bytes. ``message_limit`` (set by such a transport) tells the limit of a
peer; a response that does not fit goes block-wise, and its Block2 size is made small enough
for every block to fit, whatever size the client asked for (RFC 7959 §2.2: the server may
answer a smaller block; its NUM then counts the smaller blocks, §2.4).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, Option

BLOCK_OPTIONS = (Option.BLOCK1, Option.BLOCK2, Option.SIZE1, Option.SIZE2)


def decode_block(value: int) -> tuple[int, bool, int]:
    """(NUM, M, SZX) of a Block1/Block2 option value."""
    return value >> 4, bool(value & 0x08), value & 0x07


def encode_block(num: int, more: bool, szx: int) -> int:
    return (num << 4) | (0x08 if more else 0) | szx


def block_size(szx: int) -> int:
    return 1 << (szx + 4)


def size_exponent(size: int) -> int:
    """The largest SZX whose block fits into *size* bytes (16 .. 1024)."""
    szx = 6
    while szx > 0 and block_size(szx) > size:
        szx -= 1
    return szx


def _error(code: int, text: str = "") -> Message:
    """An error with a diagnostic payload (no Content-Format, as Californium sends it)."""
    return Message(code=code, payload=text.encode())


@dataclass
class BlockRequest:
    """What a request asks of the block-wise layer, carried to its response."""

    key: tuple
    block2: tuple[int, bool, int] | None = None  # (NUM, M, SZX) asked for
    block1: tuple[int, bool, int] | None = None  # the last Block1 received
    size2_asked: bool = False
    #: the most bytes the response may have without its token (the peer's message size
    #: limit less the request's token), None: no limit but the endpoint's
    message_limit: int | None = None


def _size(message: Message) -> int:
    """The encoded size of *message* without its token (set later, to the request's)."""
    return len(message.to_bytes()) - len(message.token)


class _Upload:
    __slots__ = ("body", "stamp")

    def __init__(self) -> None:
        self.body = bytearray()
        self.stamp = time.monotonic()


class _Download:
    __slots__ = ("response", "stamp")

    def __init__(self, response: Message) -> None:
        self.response = response
        self.stamp = time.monotonic()


class BlockwiseLayer:
    def __init__(
        self,
        max_message_size: int = 1024,
        preferred_block_size: int = 1024,
        max_body_size: int = 8192,
        lifetime: float = 300.0,
        max_transfers: int = 10_000,
    ) -> None:
        self.max_message_size = max_message_size
        self.preferred_szx = size_exponent(preferred_block_size)
        self.max_body_size = max_body_size
        self.lifetime = lifetime
        self.max_transfers = max_transfers
        self._uploads: OrderedDict[tuple, _Upload] = OrderedDict()
        self._downloads: OrderedDict[tuple, _Download] = OrderedDict()
        self.uploads_completed = 0
        self.transfers_evicted = 0
        self.transfers_expired = 0
        self.incomplete = 0
        #: the largest message a peer takes (whole, token included), or None: no limit but
        #: max_message_size; set by a transport whose peers may have one (DTLS)
        self.message_limit: Callable[[tuple], int | None] | None = None

    def _context_limit(self, peer: tuple, request: Message) -> int | None:
        limit = self.message_limit(peer) if self.message_limit is not None else None
        return None if limit is None else max(0, limit - len(request.token))

    # -- bookkeeping -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return {
            "blockwise-uploads": len(self._uploads),
            "blockwise-downloads": len(self._downloads),
            "blockwise-uploads-completed": self.uploads_completed,
            "blockwise-incomplete": self.incomplete,
            "blockwise-evicted": self.transfers_evicted,
            "blockwise-expired": self.transfers_expired,
        }

    def _expire(self, table: OrderedDict) -> None:
        deadline = time.monotonic() - self.lifetime
        while table:
            key, entry = next(iter(table.items()))
            if entry.stamp >= deadline:
                break
            del table[key]
            self.transfers_expired += 1

    def _put(self, table: OrderedDict, key: tuple, entry: _Upload | _Download) -> None:
        self._expire(table)
        table.pop(key, None)
        if len(table) >= self.max_transfers:
            table.popitem(last=False)
            self.transfers_evicted += 1
        table[key] = entry

    @staticmethod
    def key(request: Message, peer: tuple) -> tuple:
        # Method, URI path and query, and the Request-Tag (RFC 9175 §3.3) make the operation.
        return (
            peer,
            request.code,
            tuple(request.option_values(Option.URI_PATH)),
            tuple(request.option_values(Option.URI_QUERY)),
            tuple(request.option_values(Option.REQUEST_TAG)),
        )

    # -- requests ----------------------------------------------------------------------------
    def incoming(self, request: Message, peer: tuple) -> tuple[BlockRequest, Message | None]:
        """Look at a request before dispatch.

        Returns the block context and either an immediate answer (2.31, 4.08, 4.13, a block of
        a kept response) or None: dispatch the request (its payload may now be the whole
        assembled body)."""
        context = BlockRequest(self.key(request, peer))
        context.message_limit = self._context_limit(peer, request)
        block1_value = request.uint_option(Option.BLOCK1)
        block2_value = request.uint_option(Option.BLOCK2)
        context.size2_asked = request.has_option(Option.SIZE2)
        if block2_value is not None:
            context.block2 = decode_block(block2_value)
            if context.block2[2] == 7:
                return context, _error(Code.BAD_REQUEST, "BERT block size on UDP")
        if block1_value is not None:
            return self._upload(request, context, decode_block(block1_value))
        size1 = request.uint_option(Option.SIZE1)
        if len(request.payload) > self.max_body_size or (size1 or 0) > self.max_body_size:
            return context, self._too_large()
        if context.block2 is not None and context.block2[0] > 0:
            kept = self._downloads.get(context.key)
            if kept is not None and time.monotonic() - kept.stamp <= self.lifetime:
                return context, self.slice(kept.response, context)
        return context, None

    def _too_large(self) -> Message:
        message = _error(
            Code.REQUEST_ENTITY_TOO_LARGE, f"body larger than {self.max_body_size} bytes"
        )
        return message.add_option(Option.SIZE1, self.max_body_size)

    def _block_unit(self, szx: int) -> int | None:
        """Bytes per step of NUM for this SZX, or None where the SZX is not allowed (BERT's 7
        on UDP; CoAP over TCP allows it, RFC 8323 §6)."""
        return None if szx == 7 else block_size(szx)

    def _block_size_ok(self, szx: int, length: int) -> bool:
        """Whether a block that is not the last one has the right size."""
        return length == block_size(szx)

    def _upload(
        self, request: Message, context: BlockRequest, block: tuple[int, bool, int]
    ) -> tuple[BlockRequest, Message | None]:
        num, more, szx = block
        unit = self._block_unit(szx)
        if unit is None:
            return context, _error(Code.BAD_REQUEST, "BERT block size on UDP")
        offset = num * unit
        upload = self._uploads.get(context.key)
        if num == 0:
            upload = _Upload()
            self._put(self._uploads, context.key, upload)
        elif upload is None or len(upload.body) != offset:
            self._uploads.pop(context.key, None)
            self.incomplete += 1
            have = 0 if upload is None else len(upload.body)
            return context, _error(
                Code.REQUEST_ENTITY_INCOMPLETE,
                f"request block1 offset {offset} doesn't match the current position {have}!",
            )
        if more and not self._block_size_ok(szx, len(request.payload)):
            self._uploads.pop(context.key, None)
            self.incomplete += 1
            return context, _error(Code.REQUEST_ENTITY_INCOMPLETE, "block of the wrong size")
        size1 = request.uint_option(Option.SIZE1) or 0
        if offset + len(request.payload) > self.max_body_size or size1 > self.max_body_size:
            self._uploads.pop(context.key, None)
            return context, self._too_large()
        upload.body += request.payload
        upload.stamp = time.monotonic()
        # the table stays in stamp order: _expire stops at the first live entry, and the
        # bound evicts the transfer that has been idle longest
        self._uploads.move_to_end(context.key)
        if more:
            # Atomic: 2.31 Continue for every block but the last (RFC 7959 §2.3).
            continue_ = Message(code=Code.CONTINUE)
            continue_.add_option(Option.BLOCK1, encode_block(num, True, szx))
            return context, continue_
        del self._uploads[context.key]
        self.uploads_completed += 1
        context.block1 = (num, False, szx)
        request.payload = bytes(upload.body)
        request.remove_option(Option.BLOCK1)
        request.remove_option(Option.SIZE1)
        return context, None

    # -- responses ---------------------------------------------------------------------------
    def outgoing(self, context: BlockRequest, response: Message) -> Message:
        """Add Block1 to the last answer of an upload, and slice a large response."""
        if context.block1 is not None:
            response.set_option(Option.BLOCK1, encode_block(*context.block1))
        if (
            context.block2 is None
            and len(response.payload) <= self.max_message_size
            and (context.message_limit is None or _size(response) <= context.message_limit)
        ):
            return response
        # Sliced when too large, or always when the client asked for blocks (early
        # negotiation: the answer then carries Block2 even if it fits into one block).
        sliced = self.slice(response, context)
        if 0x40 <= response.code < 0x60 and len(response.payload) > len(sliced.payload):
            self._put(self._downloads, context.key, _Download(response))
        return sliced

    def slice(self, response: Message, context: BlockRequest) -> Message:
        """Block NUM of *response* as asked by *context* (NUM 0 at the preferred size if not),
        in smaller blocks if the peer's message limit needs them."""
        if context.block2 is not None:
            num, _, szx = context.block2
            szx = min(szx, 6)  # early negotiation is honoured exactly, down to 16 bytes
        else:
            num, szx = 0, self.preferred_szx
        part = self._part(response, context, num, szx)
        limit = context.message_limit
        while limit is not None and szx > 0 and _size(part) > limit:  # at most 6 rounds
            num, szx = num * 2, szx - 1  # the same offset in half the block size
            part = self._part(response, context, num, szx)
        return part

    def _part(self, response: Message, context: BlockRequest, num: int, szx: int) -> Message:
        size = block_size(szx)
        total = len(response.payload)
        start = num * size
        if start >= total and num > 0:
            return _error(Code.BAD_OPTION, "block number out of range")
        part = Message(response.type, response.code, response.mid, response.token)
        for number, value in response.options:
            if number not in BLOCK_OPTIONS:
                part.options.append((number, value))
        if context.block1 is not None:
            part.add_option(Option.BLOCK1, encode_block(*context.block1))
        part.add_option(Option.BLOCK2, encode_block(num, start + size < total, szx))
        if num == 0 or context.size2_asked:
            part.add_option(Option.SIZE2, total)
        part.payload = response.payload[start : start + size]
        return part

    def notification(self, peer: tuple, request: Message, response: Message) -> Message:
        """The first block of a large notification; the rest is fetched with GET Block2."""
        limit = self._context_limit(peer, request)
        if len(response.payload) <= self.max_message_size and (
            limit is None or _size(response) <= limit
        ):
            return response
        context = BlockRequest(self.key(request, peer), message_limit=limit)
        block2 = request.uint_option(Option.BLOCK2)
        if block2 is not None:
            context.block2 = (0, False, decode_block(block2)[2])
        self._put(self._downloads, context.key, _Download(response))
        return self.slice(response, context)

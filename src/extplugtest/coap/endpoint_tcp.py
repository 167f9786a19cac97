"""The CoAP endpoint over TCP and TLS (RFC 8323): dispatch, observe and block-wise as over UDP,
without the message layer of RFC 7252.

* No types, MIDs, ACKs, retransmission or deduplication (§3.2, §3.3): a response carries the
  request's token only, and a "confirmable" message is one send on the connection that counts
  as acknowledged at once.
* Observe (§7): notifications leave in order on the connection. A relation ends with GET
  Observe=1, with an error notification, or when its connection closes (``connection_closed``);
  the server's own pending requests to that peer fail then too.
* BERT (§6): SZX 7 blocks are accepted and sent when the peer's CSM announced
  Block-wise-Transfer with a Max-Message-Size above 1152. A BERT block carries a multiple of
  1024 bytes; block numbers count 1024-byte units. Our own large responses go in BERT blocks of
  ``bulk_blocks`` × 1024 bytes (Californium's TCP_NUMBER_OF_BULK_BLOCKS) when that is above 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from extplugtest.coap._codec import Message
from extplugtest.coap.blockwise import (
    BlockRequest,
    BlockwiseLayer,
    _error,
    block_size,
    decode_block,
    encode_block,
)
from extplugtest.coap.client import OutgoingRequests
from extplugtest.coap.codes import Code, Option
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.observe import ObserveManager
from extplugtest.coap.resource import Resource
from extplugtest.coap.transmission import ACKNOWLEDGED, TIMED_OUT

if TYPE_CHECKING:
    from extplugtest.coap._tcp_codec import TcpEngine

BERT_SZX = 7
BERT_UNIT = 1024  # a BERT block is counted in units of SZX 6 blocks (§6)
#: room for the header and options of a BERT message below the peer's Max-Message-Size
BERT_OVERHEAD = 128


class TcpBlockwiseLayer(BlockwiseLayer):
    """RFC 7959 as over UDP, plus BERT (RFC 8323 §6) for peers whose CSM allows it.

    *bert_blocks(peer)* is how many 1024-byte units one BERT block to *peer* may carry (0: the
    peer does not do BERT); *bulk_blocks* above 1 makes our own large responses BERT blocks.
    """

    def __init__(
        self,
        max_message_size: int,
        preferred_block_size: int,
        max_body_size: int,
        *,
        bert_blocks: Callable[[tuple], int],
        bulk_blocks: int = 1,
    ) -> None:
        super().__init__(max_message_size, preferred_block_size, max_body_size)
        self.bert_blocks = bert_blocks
        self.bulk_blocks = bulk_blocks

    def incoming(self, request: Message, peer: tuple) -> tuple[BlockRequest, Message | None]:
        block1 = request.uint_option(Option.BLOCK1)
        block2 = request.uint_option(Option.BLOCK2)
        if not any(v is not None and v & 0x07 == BERT_SZX for v in (block1, block2)):
            return super().incoming(request, peer)
        context = BlockRequest(self.key(request, peer))
        context.size2_asked = request.has_option(Option.SIZE2)
        if not self.bert_blocks(peer):
            return context, _error(Code.BAD_REQUEST, "BERT block without BERT in the CSM")
        if block2 is not None:
            context.block2 = decode_block(block2)
        if block1 is not None:
            return self._upload(request, context, decode_block(block1))
        if len(request.payload) > self.max_body_size:
            return context, self._too_large()
        if context.block2 is not None and context.block2[0] > 0:
            kept = self._downloads.get(context.key)
            if kept is not None and time.monotonic() - kept.stamp <= self.lifetime:
                return context, self.slice(kept.response, context)
        return context, None

    def _block_unit(self, szx: int) -> int | None:
        # A BERT block: NUM counts 1024-byte units (RFC 8323 §6).
        return BERT_UNIT if szx == BERT_SZX else super()._block_unit(szx)

    def _block_size_ok(self, szx: int, length: int) -> bool:
        # A non-final BERT block carries a multiple of 1024 bytes.
        if szx == BERT_SZX:
            return length > 0 and length % BERT_UNIT == 0
        return super()._block_size_ok(szx, length)

    def slice(self, response: Message, context: BlockRequest) -> Message:
        units = self.bert_blocks(context.key[0])
        asked = None if context.block2 is None else context.block2[2]
        bert = units > 0 and (asked == BERT_SZX or (asked is None and self.bulk_blocks > 1))
        if not bert:
            return super().slice(response, context)
        num = 0 if context.block2 is None else context.block2[0]
        # The block as SZX 6 gives options and errors; then it grows to the BERT size.
        single = BlockRequest(context.key, (num, False, 6), context.block1, context.size2_asked)
        part = super().slice(response, single)
        if part.code != response.code:
            return part  # block number out of range
        start = num * BERT_UNIT
        size = units * BERT_UNIT
        part.payload = response.payload[start : start + size]
        more = start + size < len(response.payload)
        part.set_option(Option.BLOCK2, encode_block(num, more, BERT_SZX))
        return part


class TcpObserveManager(ObserveManager):
    """Observe relations that also end with their connection (RFC 8323 §7)."""

    def cancel_peer(self, peer: tuple) -> int:
        relations = [r for r in self._relations.values() if r.peer == peer]
        for relation in relations:
            self._remove(relation)
        return len(relations)


class TcpOutgoingRequests(OutgoingRequests):
    """The server's own requests; those to a closed connection fail at once."""

    def fail_peer(self, peer: tuple) -> None:
        for key in [key for key in self._pending if key[0] == peer]:
            self._fail(key, ConnectionResetError("the connection was closed"))


class TcpEndpoint(CoapEndpoint):
    """Dispatches the requests of one CoAP-over-TCP (or TLS) endpoint; see the module text."""

    engine: TcpEngine | None  # type: ignore[assignment]
    observe: TcpObserveManager
    blockwise: TcpBlockwiseLayer
    requests: TcpOutgoingRequests

    def __init__(self, root: Resource, *, bulk_blocks: int = 1, **options: Any) -> None:
        options.setdefault("scheme", "coap+tcp")
        super().__init__(root, **options)
        observe = self.observe
        self.observe = TcpObserveManager(
            self, observe.max_relations, observe.check_count, observe.check_interval
        )
        blockwise = self.blockwise
        self.blockwise = TcpBlockwiseLayer(
            blockwise.max_message_size,
            block_size(blockwise.preferred_szx),
            blockwise.max_body_size,
            bert_blocks=self.bert_blocks,
            bulk_blocks=bulk_blocks,
        )
        self.requests = TcpOutgoingRequests(self, self.requests.max_pending)

    def attach(self, engine: TcpEngine, local_address: tuple) -> None:  # type: ignore[override]
        self.engine = engine
        self.local_address = local_address

    def bert_blocks(self, peer: tuple) -> int:
        """1024-byte units per BERT block to *peer*: 0 unless its CSM announced BERT (§5.3.2),
        at most what its Max-Message-Size allows and ``bulk_blocks`` (at least one)."""
        connection = None if self.engine is None else self.engine.connection(peer)
        if connection is None or not connection.bert:
            return 0
        room = (connection.peer_max_message_size - BERT_OVERHEAD) // BERT_UNIT
        return max(0, min(max(self.blockwise.bulk_blocks, 1), room))

    # -- sending: one write on the connection, no MID, no retransmission ---------------------
    def send_message(self, message: Message, peer: tuple) -> None:
        assert self.engine is not None
        if self.engine.send_message(message, peer) and message.code:
            self.engine.count("send-responses")

    def send_confirmable(
        self, message: Message, peer: tuple, on_done: Callable[[str], None] | None = None
    ) -> bool:
        assert self.engine is not None
        sent = self.engine.send_message(message, peer)
        if sent and message.code:
            self.engine.count("send-responses")
        if on_done is not None:  # TCP acknowledges; a closed connection is a lost client
            on_done(ACKNOWLEDGED if sent else TIMED_OUT)
        return sent

    def send_reliably_if_possible(
        self, message: Message, peer: tuple, on_done: Callable[[str], None] | None = None
    ) -> bool:
        """TCP is the reliability: False only when the connection is gone (on_done had it)."""
        return self.send_confirmable(message, peer, on_done)

    def _finish(self, request: Message, result: Message) -> Message:
        """A response is matched by its token only (§3.3)."""
        result.token = request.token
        return result

    # -- from the transport ------------------------------------------------------------------
    def connection_closed(self, peer: tuple) -> None:
        """Observations and pending requests of the connection end with it (§3.4, §7)."""
        self.observe.cancel_peer(peer)
        self.requests.fail_peer(peer)

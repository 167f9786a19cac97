"""``/shutdown`` (Californium's Shutdown): POST ``sesame`` answers 2.04 and ends the server
500 ms later; any other payload is a 4.03."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from extplugtest.coap.codes import Code
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response

logger = logging.getLogger("extplugtest.resources.plugtest")

PASSWORD = b"sesame"


def terminate_process() -> None:
    """Californium calls ``System.exit(0)``. extserver turns SIGTERM into a clean stop with
    exit code 0; stopping its loop directly would break its ``run_until_complete``."""
    os.kill(os.getpid(), signal.SIGTERM)


class Shutdown(Resource):
    def __init__(
        self, exit_action: Callable[[], None] = terminate_process, delay: float = 0.5
    ) -> None:
        super().__init__("shutdown")
        self.exit_action = exit_action
        self.delay = delay
        self.exiting = False

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        if exchange.request.payload != PASSWORD:
            return response(Code.FORBIDDEN)
        if not self.exiting:  # a retransmitted or repeated POST exits once
            self.exiting = True
            logger.warning("shutdown resource received POST, exiting in %.1f s", self.delay)
            # The delay lets the 2.04 leave first.
            asyncio.get_running_loop().call_later(self.delay, self.exit_action)
        return response(Code.CHANGED)

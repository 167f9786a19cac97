"""What resources may know about the server they run in."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from extplugtest.coap.endpoint import CoapEndpoint


def _no_endpoints() -> list[CoapEndpoint]:
    return []


@dataclass
class ResourceSettings:
    #: interval of the observe timers (--notify-interval), seconds
    notify_interval: float = 5.0
    #: /echo honours ?delay= (--echo-delay)
    echo_delay: bool = False
    #: COAP.MAX_RESOURCE_BODY_SIZE
    max_resource_body_size: int = 8192
    #: the server's start, milliseconds since the epoch ("systemstart")
    start_time_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    #: every endpoint of the server (for /diagnose)
    endpoints: Callable[[], list[CoapEndpoint]] = _no_endpoints

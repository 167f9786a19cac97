"""The ETSI CoAP#4 plugtest resources (Californium's PlugtestServer, inventory §1.5)."""

from __future__ import annotations

from collections.abc import Callable

from extplugtest.coap.codes import Type
from extplugtest.coap.resource import Resource
from extplugtest.resources.context import MyContext
from extplugtest.resources.echo import Echo
from extplugtest.resources.hono import Hono
from extplugtest.resources.myip import MyIp
from extplugtest.resources.plugtest.conditional import Create, Validate
from extplugtest.resources.plugtest.core import (
    DefaultTest,
    LocationQuery,
    MultiFormat,
    Query,
    Separate,
    long_path,
)
from extplugtest.resources.plugtest.discovery import Path, links
from extplugtest.resources.plugtest.large import (
    Large,
    LargeCreate,
    LargePost,
    LargeSeparate,
    LargeUpdate,
)
from extplugtest.resources.plugtest.observe import (
    Observe,
    ObserveLarge,
    ObservePumping,
    ObserveReset,
)
from extplugtest.resources.plugtest.shutdown import Shutdown, terminate_process
from extplugtest.resources.settings import ResourceSettings


def add_plugtest_resources(
    root: Resource,
    settings: ResourceSettings,
    *,
    exit_action: Callable[[], None] = terminate_process,
) -> None:
    """Add the plugtest resources below *root* (the plugtest endpoints' tree).

    *exit_action* is what POST /shutdown does after 500 ms (default: end the process cleanly).
    """
    interval = settings.notify_interval
    root.add(
        DefaultTest(),
        long_path(),
        Query(),
        Separate(),
        Large(),
        LargeUpdate(),
        LargeCreate(),
        LargePost(),
        LargeSeparate(),
        Observe("obs", Type.CON, interval),
        Observe("obs-non", Type.NON, interval),
        ObserveReset(),
        ObserveLarge(interval),
        ObservePumping(Type.CON, interval),
        ObservePumping(Type.NON, interval),
        LocationQuery(),
        MultiFormat(),
        *links(),
        Path(),
        Validate(),
        Create(),
        Shutdown(exit_action),
        Hono("telemetry"),
        Hono("event"),
        MyIp(visible=False),
        MyContext(visible=False),
        Echo(settings),
    )

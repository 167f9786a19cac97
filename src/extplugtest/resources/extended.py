"""The resources of the extended endpoints besides /benchmark (inventory §1.4, §2)."""

from __future__ import annotations

from extplugtest.coap.resource import Resource
from extplugtest.resources.context import MyContext
from extplugtest.resources.diagnose import Diagnose
from extplugtest.resources.echo import Echo
from extplugtest.resources.hono import Hono
from extplugtest.resources.myip import MyIp
from extplugtest.resources.requests import RequestStatistic
from extplugtest.resources.reverse import ReverseObserve, ReverseRequest
from extplugtest.resources.settings import ResourceSettings


def add_extended_resources(root: Resource, settings: ResourceSettings, diagnose: bool) -> None:
    """Add /requests, /telemetry and /event (hidden), /myip, /mycontext, /echo,
    /reverse-request, /reverse-observe and (with *diagnose*) /diagnose below *root* (the
    extended endpoints' tree)."""
    root.add(
        RequestStatistic(settings.start_time_ms),
        Hono("telemetry"),
        Hono("event"),
        MyIp(),
        MyContext(),
        Echo(settings),
        ReverseRequest(),
        ReverseObserve(),
    )
    if diagnose:
        # its children, one per endpoint, are made in start(), once the endpoints are bound
        root.add(Diagnose(settings))

"""The ETSI CoAP#4 plugtest resources (Californium's PlugtestServer, inventory §1.5)."""

from __future__ import annotations

from extplugtest.coap.resource import Resource
from extplugtest.resources.settings import ResourceSettings


def add_plugtest_resources(root: Resource, settings: ResourceSettings) -> None:
    """Add the plugtest resources below *root* (the plugtest endpoints' tree)."""

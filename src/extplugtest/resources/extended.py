"""The resources of the extended endpoints besides /benchmark (inventory §1.4, §2)."""

from __future__ import annotations

from extplugtest.coap.resource import Resource
from extplugtest.resources.settings import ResourceSettings


def add_extended_resources(root: Resource, settings: ResourceSettings, diagnose: bool) -> None:
    """Add /requests, /myip, /mycontext, /echo, /reverse-*, hono and (with *diagnose*)
    /diagnose below *root* (the extended endpoints' tree)."""

"""CoRE Link Format (RFC 6690): serialisation, filtering, and ``/.well-known/core``.

Serialised as Californium does: links sorted by path, attributes sorted by name, a flag
attribute (``obs``) without value, an integer unquoted, anything else quoted, several values
as one quoted space-separated string; links joined by ``,``.
"""

from __future__ import annotations

from collections.abc import Iterable

from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response


def format_attribute(name: str, values: list[str]) -> str:
    if not values:
        return name
    if len(values) == 1 and values[0].isdigit():
        return f"{name}={values[0]}"
    return '{}="{}"'.format(name, " ".join(values))


def format_link(resource: Resource) -> str:
    parts = [f"<{resource.path}>"]
    for name in sorted(resource.attributes):
        parts.append(format_attribute(name, resource.attributes[name]))
    return ";".join(parts)


def serialize(resources: Iterable[Resource]) -> str:
    return ",".join(format_link(r) for r in sorted(resources, key=lambda r: r.path))


def matches(resource: Resource, query: str) -> bool:
    """RFC 6690 §4.1 filtering: ``name=value`` matches any space-separated value token,
    a trailing ``*`` makes it a prefix match, ``href`` matches the link target."""
    name, _, wanted = query.partition("=")
    if name == "href":
        values = [resource.path]
    elif name in resource.attributes:
        values = resource.attributes[name]
        tokens = [token for value in values for token in value.split(" ")] if values else []
        if not wanted or wanted == "*":
            return True
        values = tokens
    else:
        return False
    if wanted.endswith("*"):
        prefix = wanted[:-1]
        return any(value.startswith(prefix) for value in values)
    return wanted in values


class WellKnownCore(Resource):
    """``/.well-known/core``: the visible resources of the tree, optionally filtered."""

    def __init__(self, root: Resource) -> None:
        super().__init__("core", visible=False)
        self.root = root

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept is not None and accept != ContentFormat.LINK_FORMAT:
            return response(Code.NOT_ACCEPTABLE)
        queries = exchange.query
        if len(queries) > 1:
            return response(
                Code.BAD_OPTION, "only one search query is supported!", ContentFormat.TEXT_PLAIN
            )
        links = [r for r in self.root.walk() if r.visible]
        if queries:
            links = [r for r in links if matches(r, queries[0])]
        return response(Code.CONTENT, serialize(links), ContentFormat.LINK_FORMAT)


def well_known(root: Resource) -> Resource:
    """The hidden ``/.well-known`` node with ``core`` below it, ready to add to *root*."""
    node = Resource(".well-known", visible=False)
    node.add(WellKnownCore(root))
    return node

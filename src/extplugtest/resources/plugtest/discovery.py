"""The TD_COAP_LINK resources: ``/link1..3`` (attributes only) and the ``/path`` hierarchy
(Californium's Link1..3, Path, PathSub; inventory §1.5)."""

from __future__ import annotations

from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.linkformat import serialize
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response


def link(name: str, interface: str, resource_types: list[str]) -> Resource:
    """A link test resource: discovered, never requested (every method is a 4.05)."""
    return Resource(
        name, title="Link test resource", attributes={"if": [interface], "rt": resource_types}
    )


def links() -> list[Resource]:
    return [
        link("link1", "If1", ["Type1", "Type2"]),
        link("link2", "If2", ["Type2", "Type3"]),
        link("link3", "foo", ["Type1", "Type3"]),
    ]


def subtree(resource: Resource) -> str:
    """Californium's ``LinkFormat.serializeTree``: the visible descendants, not the resource."""
    return serialize(child for child in resource.walk() if child.visible)


class Path(Resource):
    """``/path``: lists its sub-resources in link format (LINK_09)."""

    def __init__(self) -> None:
        super().__init__(
            "path",
            title="Hierarchical link description entry",
            attributes={"ct": [str(ContentFormat.LINK_FORMAT)]},
        )
        self.add(*(PathSub(f"sub{n}") for n in (1, 2, 3)))

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, subtree(self), ContentFormat.LINK_FORMAT)


class PathSub(Resource):
    """``/path/subN``: answers with its own path."""

    def __init__(self, name: str) -> None:
        super().__init__(name, title="Hierarchical link description sub-resource")

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, self.path, ContentFormat.TEXT_PLAIN)

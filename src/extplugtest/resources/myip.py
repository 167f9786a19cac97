"""``/myip`` (Californium's MyIpResource, inventory §1.6): the client's address as the server
sees it, e.g. to watch a NAT rebind. Addresses are written the way Java writes them."""

from __future__ import annotations

import ipaddress

from extplugtest.coap.codes import Code, ContentFormat, mime_type
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response


def not_supported(content_format: int) -> HandlerResult:
    """The 4.06 of /myip and /mycontext for an Accept they cannot produce."""
    text = f'Type "{mime_type(content_format)}" is not supported for this resource!'
    return response(Code.NOT_ACCEPTABLE, text, ContentFormat.TEXT_PLAIN)


def java_host(peer: tuple) -> str:
    """``InetAddress.getHostAddress()``: IPv6 uncompressed without leading zeros
    (``0:0:0:0:0:0:0:1``) plus ``%scope-id`` when scoped; an IPv4-mapped address is plain IPv4
    (Java makes it an Inet4Address)."""
    address = ipaddress.ip_address(peer[0].partition("%")[0])
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    text = ":".join(f"{int(group, 16):x}" for group in address.exploded.split(":"))
    scope = peer[3] if len(peer) > 3 else 0
    return f"{text}%{scope}" if scope else text


def is_ipv6(host: str) -> bool:
    return ":" in host


def java_socket_address(peer: tuple) -> str:
    """Californium's ``StringUtil.toString(InetSocketAddress)``: ``host:port``, IPv6 in
    brackets."""
    host = java_host(peer)
    return f"[{host}]:{peer[1]}" if is_ipv6(host) else f"{host}:{peer[1]}"


class MyIp(Resource):
    def __init__(self, visible: bool = True) -> None:
        super().__init__(
            "myip", title="MyIP", visible=visible, attributes={"ct": ["0", "50", "41"]}
        )

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept is None:
            accept = ContentFormat.TEXT_PLAIN
        peer = exchange.peer
        if accept == ContentFormat.TEXT_PLAIN:
            payload = java_socket_address(peer)
        elif accept == ContentFormat.JSON:
            payload = f'{{ "ip" : "{java_host(peer)}",\n "port" : {peer[1]} }}'
        elif accept == ContentFormat.XML:
            payload = f'<ip host="{java_host(peer)}" port="{peer[1]}" />'
        else:
            return not_supported(accept)
        return response(Code.CONTENT, payload, accept)

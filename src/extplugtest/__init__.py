"""extplugtest: a fast Python/Cython CoAP plugtest server, benchmark client and NAT."""

__version__ = "0.1.0"

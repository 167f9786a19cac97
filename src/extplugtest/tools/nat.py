"""``extnat``: UDP NAT / load balancer (Californium cf-nat). Not built yet."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "extnat: not available in this version yet; use a Californium cf-nat meanwhile",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Uri-Query parameters as Californium's UriQueryParameter reads them (inventory §2).

Each query is split at the first ``=``: ``name`` alone has the value None, ``name=`` the value
"". Names a resource does not support, and bad numbers, are a 4.02 with Californium's texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_JAVA_INT = re.compile(r"[+-]?[0-9]{1,10}")  # what Integer.parseInt accepts (range aside)


class QueryError(ValueError):
    """A query the resource must answer with 4.02 Bad Option; str() is the diagnostic text."""


class QueryParameters:
    def __init__(self, queries: Iterable[str], supported: Iterable[str] | None = None) -> None:
        self._values: dict[str, str | None] = {}
        self._raw: dict[str, str] = {}
        allowed = None if supported is None else set(supported)
        for query in queries:
            name, sep, value = query.partition("=")
            if allowed is not None and name not in allowed:
                raise QueryError(f"URI-query-option '{query}' is not supported!")
            self._values[name] = value if sep else None
            self._raw[name] = query

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get(name, default)
        return default if value is None else value

    def get_int(self, name: str, default: int, minimum: int, maximum: int) -> int:
        """The value as Java's Integer.parseInt reads it; *default* when absent or bare."""
        text = self._values.get(name)
        if text is None:
            return default
        if not _JAVA_INT.fullmatch(text):
            raise QueryError(f"URI-query-option '{self._raw[name]}' is no number!")
        value = int(text)
        if value < minimum:
            raise QueryError(f"URI-query-option '{name}={value}' is less than {minimum}!")
        if value > maximum:
            raise QueryError(f"URI-query-option '{name}={value}' is more than {maximum}!")
        return value

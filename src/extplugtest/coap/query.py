"""Uri-Query parameters as Californium's UriQueryParameter reads them (inventory §2).

Each query is split at the first ``=``: ``name`` alone has the value None, ``name=`` the value
"". Names a resource does not support, and bad numbers, are a 4.02 with Californium's texts.
"""

from __future__ import annotations

from collections.abc import Iterable


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
        if name not in self._values:
            return default
        raw = self._raw[name]
        text = self._values[name]
        try:
            value = int(text) if text is not None else None
        except ValueError:
            value = None
        if value is None:
            raise QueryError(f"URI-query-option '{raw}' is no number!")
        if value < minimum:
            raise QueryError(f"URI-query-option '{raw}' is less than {minimum}!")
        if value > maximum:
            raise QueryError(f"URI-query-option '{raw}' is more than {maximum}!")
        return value

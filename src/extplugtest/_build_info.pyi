import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

def openssl_linkage() -> str: ...
def openssl_headers() -> str: ...
def openssl_version() -> str: ...
def cryptography_openssl_version() -> str: ...
def version_text(prog: str) -> str: ...

class VersionAction(argparse.Action):
    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = ...,
        default: Any = ...,
        help: str = ...,
    ) -> None: ...
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn: ...

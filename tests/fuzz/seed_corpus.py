"""The fuzz targets' --seed-corpus=DIR option: write the target's seeds into DIR and use DIR
as a corpus directory of libFuzzer."""

from __future__ import annotations

import os
from collections.abc import Iterable


def with_seed_corpus(argv: list[str], seeds: Iterable[bytes]) -> list[str]:
    """*argv* for atheris.Setup, with every --seed-corpus=DIR written and replaced by DIR."""
    out = []
    for arg in argv:
        if arg.startswith("--seed-corpus="):
            directory = arg.split("=", 1)[1]
            os.makedirs(directory, exist_ok=True)
            for i, seed in enumerate(seeds):
                with open(os.path.join(directory, f"seed-{i:02d}"), "wb") as f:
                    f.write(seed)
            out.append(directory)
        else:
            out.append(arg)
    return out

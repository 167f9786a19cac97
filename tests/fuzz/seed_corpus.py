"""What every fuzz target shares: its --seed-corpus=DIR option (write the target's seeds into
DIR and use DIR as a corpus directory of libFuzzer), and the start of the fuzzing itself."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


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


def fuzz(
    argv: list[str],
    seeds: Iterable[bytes],
    check: Callable[[bytes], None],
    test_one_input: Callable[[bytes], None],
    instrumented: Iterable[Callable[..., object]] = (),
) -> None:
    """The common end of every target's main(): instrument *instrumented* (the target's own
    reference code), prove that every seed passes *check* (fuzzing means nothing otherwise),
    then hand over to libFuzzer with the seeds as corpus."""
    import atheris

    for function in instrumented:
        atheris.instrument_func(function)
    seeds = list(seeds)
    for seed in seeds:
        check(seed)
    atheris.Setup(with_seed_corpus(argv, seeds), test_one_input)
    atheris.Fuzz()

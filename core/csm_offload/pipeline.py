"""`python -m csm_offload.pipeline`: the original `src/pipeline.py` command line, run by
`csm-offload book`.

    python -m csm_offload.pipeline --urls urls.csv --groups group1 --cloud-gpu
    python -m csm_offload.pipeline --urls urls.csv --groups group1 group2 --local-audio
    python -m csm_offload.pipeline --urls urls.csv --groups group1 --audio-only

The flags keep their meaning (docs/book.md, "The seed's flags"): `--urls` a CSV of
`url,group[,title]`, `--groups` the groups to make (separated by spaces, as the original took
them, or commas), `--cloud-gpu` remote GPUs only, `--local-audio` this machine only,
`--audio-only` reuse the text extracted before and fetch nothing. Without `--urls` (and no
source files), `urls.csv` in the current directory is read, as the original did. Every other
option of `csm-offload book` may follow (`-o`, `--format m4b`, `--max-usd`, `--dry-run`, ...);
`--config PATH` and `--debug` belong to the command line and may come anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from .cli import main as cli_main
from .cli.book import book_command

DEFAULT_URLS = "urls.csv"
#: The command line's own options, which go before the subcommand.
GLOBAL_FLAGS = ("--debug",)
GLOBAL_VALUES = ("--config",)


def split_globals(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`--config PATH` and `--debug` (for `csm-offload` itself), and the rest."""
    front: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in GLOBAL_FLAGS or arg.startswith(tuple(f"{o}=" for o in GLOBAL_VALUES)):
            front.append(arg)
        elif arg in GLOBAL_VALUES:
            front += [arg, next(args, "")]
        else:
            rest.append(arg)
    return front, rest


def _value_options() -> set[str]:
    """`book`'s options that take a value (so the word after them is not a source)."""
    found: set[str] = set()
    for param in book_command.params:
        if isinstance(param, click.Option) and not param.is_flag:
            found.update(param.opts + param.secondary_opts)
    return found


def join_groups(argv: Sequence[str]) -> list[str]:
    """`--groups a b --groups c` (the original's form) as `--groups a,b,c`."""
    groups: list[str] = []
    rest: list[str] = []
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg.startswith("--groups="):
            groups.append(arg.split("=", 1)[1])
        elif arg == "--groups":
            while index < len(args) and not args[index].startswith("-"):
                groups.append(args[index])
                index += 1
        else:
            rest.append(arg)
    names = [name.strip() for group in groups for name in group.split(",") if name.strip()]
    return [*rest, "--groups", ",".join(names)] if groups else rest


def _has_input(argv: Sequence[str]) -> bool:
    """Whether `--urls` or a source file is given."""
    takes_value = _value_options()
    args = iter(argv)
    for arg in args:
        if arg == "--urls" or arg.startswith("--urls="):
            return True
        if arg in takes_value:
            next(args, None)
        elif not arg.startswith("-"):
            return True
    return False


def book_args(argv: Sequence[str]) -> list[str]:
    """The `csm-offload` arguments that do what the original pipeline's `argv` asked."""
    front, rest = split_globals(argv)
    rest = join_groups(rest)
    wants_help = "--help" in rest or "-h" in rest
    if not wants_help and not _has_input(rest) and Path(DEFAULT_URLS).is_file():
        rest = ["--urls", DEFAULT_URLS, *rest]
    return [*front, "book", *rest]


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(book_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()

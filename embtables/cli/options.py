"""Arguments several subcommands share: a method, its budget, backend and options."""

from __future__ import annotations

import argparse
import ast
from typing import Any, Sequence

from embtables.datasets.criteo import DEFAULT_MAX_BAD_FRACTION
from embtables.stores import BACKENDS


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """`["buckets=1000", "operation=mult"]` -> `{"buckets": 1000, "operation": "mult"}` (Python literals, else str)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: method option {item!r} must look like name=value")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


BUDGET_HELP = ("what the collection may use, as a fraction in (0, 1] of the sum of all tables' full fp32 bytes "
               "(N x D x 4 summed over the tables); each method spreads it over the tables its own way (hash: one row "
               "cap for all; mixed_dim: dims by table size; unified: one shared table; `embtables plan` shows the "
               "split per table)")


class HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none (None, False, []) or its help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        none = action.default is None or action.default is False or action.default == [] or action.default == argparse.SUPPRESS
        if not action.option_strings or "default" in text or none:
            return text
        return (text + " " if text else "") + "(default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:  # keep the line breaks of an epilog
        return "\n".join(super(HelpWithDefaults, self)._fill_text(line, width, indent) for line in text.splitlines())


def with_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` and all its subcommands' parsers with `HelpWithDefaults`."""
    parser.formatter_class = HelpWithDefaults
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                with_defaults(sub)
    return parser


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """The method arguments shared by `plan`, `train` and friends."""
    p.add_argument("--method", default="full", help="a registered method (see `embtables plan --list`)")
    p.add_argument("--budget", type=float, default=None, help=BUDGET_HELP)
    p.add_argument("--backend", default="fbgemm", choices=sorted(BACKENDS), help="the store holding the tables")
    p.add_argument("-o", "--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a method option, e.g. -o buckets=1000 -o seed=3 (repeatable)")


def add_split_arguments(p: argparse.ArgumentParser, bad_lines_help: str) -> None:
    """The split and bad-line arguments of every preprocessing command (after its own `--split`)."""
    p.add_argument("--seed", type=int, default=None, help="hash seed of --split random (default 0)")
    p.add_argument("--fractions", type=fractions, default=None, metavar="TRAIN,VAL,TEST",
                   help="split shares of --split random or ordered (default 0.8,0.1,0.1)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    p.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION, metavar="FRACTION",
                   help=bad_lines_help)


def fractions(text: str) -> tuple[float, float, float]:
    """`--fractions TRAIN,VAL,TEST` of the preprocessing commands: three numbers."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST numbers, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers TRAIN,VAL,TEST, got {text!r}")
    return parts  # type: ignore[return-value]


def add_quiet_argument(p: argparse.ArgumentParser, what: str = "progress") -> None:
    """`--quiet`: no progress on stderr (on a terminal a bar, in a log a line every few percent)."""
    p.add_argument("--quiet", action="store_true", help=f"no {what} on stderr (on a terminal a bar, in a log a "
                   "line every few percent); results and errors still print")

"""`dynanoise bench`: a thin delegate to the benchmark harness (``python -m bench``).

The benchmarks are not part of the installed package: they live in bench/ of a source
checkout. From a checkout (editable install, or ``python -m service.cli``) this runs
them with the same arguments (``dynanoise bench --help`` lists them); from an installed
wheel it says where to find them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

HARNESS = "bench.harness.cli"
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root, when this is one
NOT_INSTALLED = (
    "dynanoise bench: the benchmarks are not part of the installed package. "
    "Run them from a source checkout of dynanoise: `python -m bench [--quick]` "
    "(or `make bench`, or `dynanoise bench` with the checkout installed in editable mode)."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "bench",
        add_help=False,  # --help, like every other option, goes to the harness
        help="benchmark the defense, the service, BentoML and a naive FastAPI app "
        "(source checkout; same as `python -m bench`)",
    )
    p.set_defaults(handler=run, forwards_arguments=True)


def run(args: argparse.Namespace) -> int:
    harness = harness_cli()
    if harness is None:
        print(NOT_INSTALLED, file=sys.stderr)
        return 2
    code: int = harness.main(list(args.forwarded), prog="dynanoise bench")
    return code


def harness_cli() -> ModuleType | None:
    """``bench.harness.cli`` from the path, else from the checkout this `service`
    package sits in; None when there is none (an installed wheel). A harness that is
    there but fails to import raises."""
    try:
        return importlib.import_module(HARNESS)
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.harness", HARNESS):
            raise
    if not (CHECKOUT / "bench" / "harness" / "cli.py").is_file():
        return None
    sys.path.insert(0, str(CHECKOUT))
    return importlib.import_module(HARNESS)

"""`dynanoise` console entry point: a thin shell over library functions.

Each sub-command lives in `service.commands.<name>` and registers itself through
``register(subparsers)``. Only the command being run is imported: the commands pull
in the store (SQLAlchemy, Alembic), uvicorn, numpy or torch, and `dynanoise --help`
must not wait for them. The table below is explicit: a command that fails to import
is an error when run, never a command that silently goes missing. Commands whose
optional dependencies are missing (torch for `train`, for instance) say so when run;
`bench` delegates to the benchmark harness of a source checkout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

COMMANDS: dict[str, str] = {
    "serve": "start the inference service",
    "tenants": "manage tenants and their API keys",
    "models": "manage model directories",
    "train": "train a classifier (torch) and export it to ONNX + manifest (needs .[audit])",
    "audit": "membership-inference audit of the defenses: results.json/csv, report.md, plots "
    "(needs .[audit])",
    "calibrate": "choose a tenant's privacy setting: search output modes and DynaNoise's "
    "parameters against the adaptive audit within a utility budget (needs .[audit])",
    "bench": "benchmark the defense, the service, BentoML and a naive FastAPI app "
    "(source checkout; same as `python -m bench`)",
}
"""Every sub-command and its one-line help, as its module registers it (a test checks)."""

_DESCRIPTION = "Serve ONNX classifiers behind the DynaNoise defense, and audit them."


def command_module(name: str) -> ModuleType:
    """The module of sub-command ``name`` (imported now)."""
    return importlib.import_module(f"service.commands.{name}")


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with ``commands`` registered by their modules (default: all); the
    others are listed by name and help only, without importing them."""
    selected = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(prog="dynanoise", description=_DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if name in selected:
            command_module(name).register(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names: its first argument, if it is one."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    parser = build_parser([command] if command else [])
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "forwards_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.forwarded = rest  # a delegating command (bench) parses these itself
    result: int | None = args.handler(args)
    return result or 0


if __name__ == "__main__":
    sys.exit(main())

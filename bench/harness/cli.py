"""The benchmark's command line: ``python -m bench`` (and ``dynanoise bench``, which
delegates here from a source checkout). Writes results.json, README.md and plots:
a full run into bench/ (the committed results), ``--quick`` into reports/bench-quick/
unless ``--out`` says otherwise."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import QUICK_DIR, RESULTS_DIR, SECTIONS


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def build_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark the defense, the service, BentoML and a naive FastAPI app.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller run, under three minutes")
    p.add_argument(
        "--out",
        type=Path,
        help=f"output directory (default: {RESULTS_DIR}, the committed results; "
        f"with --quick: {QUICK_DIR})",
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="shipped models")
    p.add_argument("--model", help="model directory under --models-dir (default: models/DEFAULT)")
    p.add_argument(
        "--sections",
        type=_csv,
        default=SECTIONS,
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    p.add_argument(
        "--bentoml-python",
        type=Path,
        help="python of the venv with BentoML (default: bench/.venv, then /tmp/bench-venv)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    return run(args, prog=prog, command=f"{prog} {shlex.join(argv)}".strip())


def run(args: argparse.Namespace, *, prog: str, command: str) -> int:
    from .config import BenchConfig
    from .launcher import ServerError
    from .load import LoadError
    from .runner import run_bench

    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        print(f"{prog}: unknown sections {sorted(unknown)}", file=sys.stderr)
        return 2
    preset = BenchConfig.quick if args.quick else BenchConfig.full
    changes: dict[str, object] = {} if args.out is None else {"out_dir": args.out}
    config = preset(
        models_dir=args.models_dir,
        model=args.model,
        sections=tuple(args.sections),
        bentoml_python=args.bentoml_python,
        plots=not args.no_plots,
        command=command,
        **changes,
    )
    try:
        results = run_bench(config, log=lambda line: print(line, flush=True))
    except (LoadError, ServerError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {config.out_dir / 'results.json'} and {config.out_dir / 'README.md'}")
    for key, value in results["summary"].items():
        if key != "targets_met":
            print(f"  {key}: {'not measured' if value is None else f'{value:.3g}'}")
    return 0

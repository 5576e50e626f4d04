"""`dynanoise bench`: measure the defense, the service and its rivals; write
bench/results.json and bench/README.md (tables and plots)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..bench.config import SECTIONS

    p = subparsers.add_parser(
        "bench", help="benchmark the defense, the service, BentoML and a naive FastAPI app"
    )
    p.add_argument("--quick", action="store_true", help="a smaller run, under three minutes")
    p.add_argument("--out", type=Path, default=Path("bench"), help="output directory (bench)")
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
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, run_bench
    from ..bench.config import SECTIONS
    from ..bench.load import LoadError
    from ..bench.servers import ServerError

    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        print(f"dynanoise bench: unknown sections {sorted(unknown)}", file=sys.stderr)
        return 2
    preset = BenchConfig.quick if args.quick else BenchConfig.full
    config = preset(
        out_dir=args.out,
        models_dir=args.models_dir,
        model=args.model,
        sections=tuple(args.sections),
        bentoml_python=args.bentoml_python,
        plots=not args.no_plots,
        command="dynanoise " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else
        "dynanoise bench" + (" --quick" if args.quick else ""),
    )  # fmt: skip
    try:
        results = run_bench(config, log=lambda line: print(line, flush=True))
    except (LoadError, ServerError) as exc:
        print(f"dynanoise bench: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'results.json'} and {args.out / 'README.md'}")
    for key, value in results["summary"].items():
        if key != "targets_met":
            print(f"  {key}: {'not measured' if value is None else f'{value:.3g}'}")
    return 0

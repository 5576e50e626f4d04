"""The benchmark's command line: ``python -m bench`` (and ``dynanoise bench``, which
delegates here from a source checkout). Writes results.json, README.md and plots into
a scratch directory, reports/bench-<UTC time> (``--quick``: reports/bench-quick/),
unless ``--out`` names another; ``--out bench`` replaces the committed results, which
a ``--quick`` run never does. What a run needs beyond the serving install (matplotlib
for the plots, wrk for the load sections) is checked before anything runs."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from .config import QUICK_DIR, RESULTS_DIR, SECTIONS

COMMITTED_DIR = Path(__file__).resolve().parents[1]
"""bench/ of the checkout: the committed results, whatever the working directory."""
SCRATCH_ROOT = Path("reports")
LOAD_SECTIONS = frozenset({"service", "binary", "batching", "peers", "overload", "memory"})
"""Sections that drive a server with wrk."""


_RENAMED = {"baselines": "peers"}  # sections' former names, still accepted


def _csv(value: str) -> tuple[str, ...]:
    parts = (part.strip() for part in value.split(",") if part.strip())
    return tuple(_RENAMED.get(part, part) for part in parts)


def build_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark the defense, the service, its peers (KServe, MLServer, LitServe, "
        "BentoML, a naive FastAPI app) and the framework floor.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller run, under three minutes")
    p.add_argument(
        "--out",
        type=Path,
        help=f"output directory (default: {SCRATCH_ROOT}/bench-<UTC time>; with --quick: "
        f"{QUICK_DIR}); --out {RESULTS_DIR} replaces the committed results (not with --quick)",
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
        help="python of a venv with BentoML (default: bench/.venvs/bentoml, make bench-venvs)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    return run(args, prog=prog, command=f"{prog} {shlex.join(argv)}".strip())


def run(args: argparse.Namespace, *, prog: str, command: str) -> int:
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        print(f"{prog}: unknown sections {sorted(unknown)}", file=sys.stderr)
        return 2
    if args.quick and args.out is not None and is_committed(args.out):
        print(
            f"{prog}: --quick never writes over the committed results in {args.out}",
            file=sys.stderr,
        )
        return 2
    missing = missing_requirements(args.sections, plots=not args.no_plots)
    if missing:
        print(f"{prog}: missing {'; '.join(missing)}", file=sys.stderr)
        return 2
    from .config import BenchConfig
    from .launcher import ServerError
    from .load import LoadError
    from .runner import run_bench

    preset = BenchConfig.quick if args.quick else BenchConfig.full
    changes: dict[str, object] = {"out_dir": out_dir(args.out, quick=args.quick)}
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
            print(f"  {key}: {_shown(value)}")
    if not is_committed(config.out_dir):
        print(f"results in {config.out_dir} (--out {RESULTS_DIR} to replace the committed ones)")
    return 0


def _shown(value: object) -> str:
    """A summary value on the console: a number to 3 digits, a name as it is."""
    if value is None:
        return "not measured"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def out_dir(out: Path | None, *, quick: bool, now: datetime | None = None) -> Path:
    """Where a run writes: ``out``, else a scratch directory, never the committed bench/."""
    if out is not None:
        return out
    if quick:
        return QUICK_DIR
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return SCRATCH_ROOT / f"bench-{stamp}"


def is_committed(path: Path) -> bool:
    """Whether ``path`` is the checkout's bench/ (the committed results)."""
    return path.resolve() == COMMITTED_DIR


def missing_requirements(sections: Sequence[str], *, plots: bool) -> list[str]:
    """What the run of ``sections`` needs and this machine lacks, one phrase each."""
    missing = []
    if plots and importlib.util.find_spec("matplotlib") is None:
        missing.append("matplotlib for the plots (pip install -e '.[audit]', or --no-plots)")
    load = sorted(LOAD_SECTIONS & set(sections))
    if load and shutil.which("wrk") is None:
        missing.append(
            f"wrk for the sections {','.join(load)} (Debian: apt-get install -y wrk; "
            "or --sections defense)"
        )
    return missing

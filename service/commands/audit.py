"""`dynanoise audit --dataset NAME --out DIR`: attack the defenses, write the report.

Exit status: 0 done (and the gate, if any, passed), 1 the gate failed, 2 the audit
could not run.

In process (default): train a target on the paper's split and compare every
defense under the paper and the defense-aware protocols. Black-box: with
--endpoint, --api-key and --model, audit a live deployment over HTTP; the
model's directory (--models-dir/<model>, its manifest holds the split) tells
members from non-members.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FULL = {"population": None, "repeats": 5, "budgets": "1,4,16,64", "bootstrap": 200}
QUICK = {"population": 8, "repeats": 2, "budgets": "1,4", "bootstrap": 50}
"""--quick's values for the options a command line leaves out (given ones win)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "audit",
        help="membership-inference audit of the defenses: results.json/csv, report.md, plots "
        "(needs .[audit])",
    )
    p.add_argument("--dataset", default="digits", help="data set to train the target on")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument("--protocol", choices=("paper", "defense-aware", "both"), default="both")
    p.add_argument(
        "--defenses",
        action="append",
        help="comma-separated subset of: no_defense, temperature_only, static_gaussian, "
        "top1_label_only, top_k_rounded, dynanoise_fresh, dynanoise_keyed, "
        "dynanoise_keyed_logits, calibrated_label, coarse (default: all; with --endpoint: "
        "no_defense only, beside the served one)",
    )
    p.add_argument("--params", help="DynaNoise parameters, e.g. base_variance=0.3,temperature=10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--population",
        type=int,
        help="models of the leave-one-out design, even (default: enough for 10,000 member "
        "pairs in process; 64 shadows with --endpoint)",
    )
    p.add_argument("--paper-shadows", type=int, default=3, help="shadows for the paper's LiRA")
    p.add_argument(
        "--repeats",
        type=int,
        help="repeats over server noise, keyed secrets and attacker seeds (intervals; default 5)",
    )
    p.add_argument(
        "--budgets",
        help="answers per row the adaptive attacker may ask, comma-separated (default 1,4,16,64)",
    )
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for the CIs (default 200)")
    p.add_argument(
        "--no-label-only", action="store_true", help="skip the boundary-distance label attack"
    )
    p.add_argument("--max-members", type=int, help="cap the target's training set")
    p.add_argument("--epochs", type=int, help="training epochs (target and shadows)")
    p.add_argument("--data-dir", type=Path, help="local copy of cifar10, imagenet10 or sst2")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 8 models, 2 repeats, budgets 1 and 4, 50 resamples (options "
        "given explicitly win)",
    )
    gate = p.add_argument_group("gate: exit 1 when a worst case exceeds a bound")
    gate.add_argument("--max-auc", type=float, help="bound on the worst-case AUC")
    gate.add_argument(
        "--max-tpr-at-1pct-fpr", type=float, help="bound on the worst-case TPR at 1 %% FPR"
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    http = p.add_argument_group("black-box audit of a live deployment")
    http.add_argument(
        "--endpoint", help="base URL of `dynanoise serve`, e.g. http://127.0.0.1:8000"
    )
    http.add_argument("--api-key", help="a tenant API key for the endpoint")
    http.add_argument("--model", help="served model name")
    http.add_argument("--api", choices=("v1", "v2"), default="v1", help="v1 JSON or v2 binary")
    http.add_argument(
        "--batch-size",
        type=int,
        default=1024,
        help="rows per request: the server's DYNANOISE_MAX_BATCH (default 1024), so that "
        "near-duplicates go in as few requests as it allows",
    )
    http.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="where <model>/manifest.json lives"
    )
    http.add_argument(
        "--served-params",
        help="the tenant's defense parameters as the attacker assumes them "
        "(e.g. noise_mode=keyed); default: the paper's",
    )
    # Canonical command line for the report: every option that differs from its default.
    options = [
        (a.option_strings[-1], a.dest, a.default, a.nargs == 0)
        for a in p._actions
        if a.option_strings and a.dest != "help"
    ]
    p.set_defaults(handler=run, command_options=options)


def run(args: argparse.Namespace) -> int:
    try:
        import torch

        from ..audit.config import AuditConfig, HttpTarget
        from ..audit.gate import describe, gate_verdict
        from ..audit.report import write_report
        from ..audit.runner import run_audit
    except ModuleNotFoundError as exc:
        print(
            f"dynanoise audit needs the audit extra (pip install '.[audit]'): {exc}",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(max(1, args.threads))
    try:
        config, http, model_dir = _plan(args, AuditConfig, HttpTarget)
        started = time.monotonic()
        outcome = run_audit(
            config,
            model_dir=model_dir,
            http=http,
            progress=not args.no_progress,
            command=_command(args),
        )
        outcome.results["elapsed_seconds"] = round(time.monotonic() - started, 1)
        verdict = None
        if args.max_auc is not None or args.max_tpr_at_1pct_fpr is not None:
            verdict = gate_verdict(
                outcome.results,
                max_auc=args.max_auc,
                max_tpr_at_1pct_fpr=args.max_tpr_at_1pct_fpr,
            )
            outcome.results["gate"] = verdict
        paths = write_report(outcome.results, outcome.rocs, args.out, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dynanoise audit: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {', '.join(str(p) for p in paths.values())} "
        f"in {outcome.results['elapsed_seconds']} s"
    )
    if verdict is not None:
        for violation in verdict["violations"]:
            print(f"gate: FAIL {describe(violation)}", file=sys.stderr)
        if not verdict["passed"]:
            return 1
        print("gate: passed")
    return 0


def _plan(
    args: argparse.Namespace, config_type: Any, http_type: Any
) -> tuple[Any, Any, Path | None]:
    from ..audit.defenses import BASELINE, DEFENSE_NAMES

    protocols = ("paper", "defense-aware") if args.protocol == "both" else (args.protocol,)
    http = None
    model_dir = None
    default_defenses: Sequence[str] = DEFENSE_NAMES
    if args.endpoint:
        if not (args.api_key and args.model):
            raise ValueError("--endpoint needs --api-key and --model")
        model_dir = args.models_dir / args.model
        http = http_type(
            args.endpoint,
            args.api_key,
            args.model,
            params=parse_params(args.served_params),
            endpoint=args.api,
            batch_size=args.batch_size,
        )
        default_defenses = (BASELINE,)
    defaults = QUICK if args.quick else FULL
    chosen = {
        key: getattr(args, key) if getattr(args, key) is not None else value
        for key, value in defaults.items()
    }
    config = config_type(
        dataset=args.dataset,
        protocols=protocols,
        defenses=split_names(args.defenses) if args.defenses else tuple(default_defenses),
        params=parse_params(args.params),
        seed=args.seed,
        population=chosen["population"],
        n_paper_shadows=args.paper_shadows,
        repeats=chosen["repeats"],
        budgets=tuple(int(b) for b in str(chosen["budgets"]).split(",") if b.strip()),
        n_bootstrap=chosen["bootstrap"],
        label_only=not args.no_label_only,
        max_members=args.max_members,
        epochs=args.epochs,
        data_dir=args.data_dir,
    )
    return config, http, model_dir


def parse_params(text: str | None) -> Any:
    """'base_variance=0.3,noise_mode=keyed' -> DefenseParams (other fields: the paper's)."""
    from ..defense import DefenseParams

    return DefenseParams.parse(text)


def split_names(values: Sequence[str]) -> tuple[str, ...]:
    """Repeated and comma-separated --defenses values as one tuple of names."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, the API key masked (a report must
    never hold it)."""
    words = ["dynanoise", "audit"]
    for flag, dest, default, is_switch in args.command_options:
        value = getattr(args, dest)
        if (value == default and dest != "dataset") or value is None:
            continue
        if is_switch:
            words.append(flag)
        elif isinstance(value, list):
            words += [w for v in value for w in (flag, str(v))]
        else:
            words += [flag, "***" if dest == "api_key" else str(value)]
    return shlex.join(words)

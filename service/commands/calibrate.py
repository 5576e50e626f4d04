"""`dynanoise calibrate --model NAME --max-accuracy-drop X`: choose a tenant's privacy
setting from the adaptive audit's worst case, on shadow and reference data only.

Exit status: 0 a setting was chosen (and applied, with --apply), 1 no setting fits
the utility budget, 2 the search could not run. Writes calibration.json,
calibration.md and frontier.png into --out. With --apply --tenant NAME the chosen
setting is written to that tenant: through the admin API of --endpoint (with
--admin-token), else straight into the tenant store (--database-url or
DYNANOISE_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="choose a tenant's privacy setting: search output modes and DynaNoise's "
        "parameters against the adaptive audit within a utility budget (needs .[audit])",
    )
    p.add_argument("--model", help="model name under --models-dir (default: models/DEFAULT)")
    p.add_argument("--models-dir", type=Path, help="default: DYNANOISE_MODELS_DIR or ./models")
    p.add_argument("--out", type=Path, help="report directory (default reports/calibrate-MODEL)")
    p.add_argument("--query-budget", type=int, default=64, help="answers per row (default 64)")
    p.add_argument("--max-accuracy-drop", type=float, help="e.g. 0.005 (test split)")
    p.add_argument("--max-ece", type=float, help="highest ECE allowed (test split)")
    p.add_argument("--max-nll-increase", type=float, help="highest NLL increase allowed")
    p.add_argument(
        "--settings",
        help="comma-separated subset of the settings tried (names as in the report; "
        "the paper's default is always kept)",
    )
    p.add_argument("--population", type=int, default=16, help="search models (even)")
    p.add_argument("--repeats", type=int, default=2, help="repeats per setting in the search")
    p.add_argument("--reaudit-population", type=int, default=16)
    p.add_argument("--reaudit-repeats", type=int, default=3)
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-label-only", action="store_true", help="skip the boundary attack")
    p.add_argument("--data-dir", type=Path, help="local data directory (CIFAR-10, SST-2, ...)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--no-progress", action="store_true")
    apply = p.add_argument_group("apply the chosen setting")
    apply.add_argument("--apply", action="store_true", help="write it to --tenant")
    apply.add_argument("--tenant", help="the tenant to update")
    apply.add_argument("--endpoint", help="a live server's base URL (admin API)")
    apply.add_argument("--admin-token", help="with --endpoint (default DYNANOISE_ADMIN_TOKEN)")
    apply.add_argument("--database-url", help="without --endpoint: the tenant store")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import torch

        from ..audit.calibrate import CalibrateConfig, run_calibration
        from ..audit.tuning import UtilityBudget, default_settings, parse_settings
        from ..audit.tuning_report import write_calibration_report
    except ModuleNotFoundError as exc:
        print(
            f"dynanoise calibrate needs the audit extra (pip install '.[audit]'): {exc}",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(max(1, args.threads))
    if args.apply and not args.tenant:
        print("dynanoise calibrate: --apply needs --tenant", file=sys.stderr)
        return 2
    try:
        model_dir = _model_dir(args)
        settings = (
            parse_settings(n.strip() for n in args.settings.split(",") if n.strip())
            if args.settings
            else default_settings()
        )
        config = CalibrateConfig(
            model_dir=model_dir,
            budget=UtilityBudget(args.max_accuracy_drop, args.max_ece, args.max_nll_increase),
            query_budget=args.query_budget,
            settings=settings,
            population=args.population,
            repeats=args.repeats,
            reaudit_population=args.reaudit_population,
            reaudit_repeats=args.reaudit_repeats,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            label_only=not args.no_label_only,
            data_dir=args.data_dir,
        )
        record = run_calibration(config, progress=not args.no_progress)
        out = args.out or Path("reports") / f"calibrate-{model_dir.name}"
        paths = write_calibration_report(record, out, _command(args))
    except (FileNotFoundError, ValueError) as exc:
        print(f"dynanoise calibrate: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in paths)} in {record['seconds']:.0f} s")
    chosen = record["chosen"]
    if chosen is None:
        print("no setting fits the utility budget", file=sys.stderr)
        return 1
    reaudit = record["reaudit"]["settings"].get(chosen["name"], {})
    print(
        f"chosen: {chosen['name']}: worst-case AUC {reaudit.get('auc', float('nan')):.3f} "
        f"in the held-out re-audit at {record['query_budget']} queries per row"
    )
    if args.apply:
        try:
            where = _apply(args, chosen["params"])
        except (OSError, ValueError, LookupError) as exc:
            print(f"dynanoise calibrate: could not apply: {exc}", file=sys.stderr)
            return 2
        print(f"applied to tenant {args.tenant!r} ({where})")
    return 0


def _model_dir(args: argparse.Namespace) -> Path:
    from ..settings import Settings

    models_dir = args.models_dir or Path(Settings().models_dir)
    name = args.model
    if name is None:
        default = models_dir / "DEFAULT"
        name = default.read_text().strip() if default.exists() else "digits"
    model_dir = models_dir / name
    if not (model_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{model_dir}: no manifest.json (is --model right?)")
    return model_dir


def _apply(args: argparse.Namespace, params: dict[str, Any]) -> str:
    """Write ``params`` to the tenant; where it went, in words."""
    if args.endpoint:
        import httpx

        from ..settings import Settings

        token = args.admin_token or Settings().admin_token
        if not token:
            raise ValueError("--endpoint needs --admin-token (or DYNANOISE_ADMIN_TOKEN)")
        url = f"{args.endpoint.rstrip('/')}/admin/tenants/{args.tenant}"
        response = httpx.patch(
            url, json=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        if response.status_code != 200:
            raise ValueError(f"PATCH {url} answered {response.status_code}: {response.text}")
        return f"admin API of {args.endpoint}"
    from ..settings import Settings
    from ..tenants import TenantStore

    settings = Settings()
    store = TenantStore(args.database_url or settings.database_url)
    try:
        store.migrate()
        store.update(args.tenant, allow_clean_outputs=settings.allow_clean_outputs, **params)
    finally:
        store.close()
    return "tenant store"


def _command(args: argparse.Namespace) -> str:
    """The command line, the admin token masked."""
    argv = list(sys.argv[1:]) or ["calibrate"]
    masked = []
    hide = False
    for word in argv:
        masked.append("***" if hide else word)
        hide = word == "--admin-token"
    return "dynanoise " + shlex.join(masked)

"""`dynanoise tenants add|list|update|rotate-key|remove`: manage tenants in the store
named by DYNANOISE_DATABASE_URL (or --database-url).

As in the admin API, base_variance 0 (clean probabilities) is refused unless
DYNANOISE_ALLOW_CLEAN_OUTPUTS is set, and --allowed-models must name models of the
models directory (DYNANOISE_MODELS_DIR or --models-dir). `rotate-key demo` refreshes
the demo key file (`serve.demo_key_path`) where there is one. The store is imported
when a command runs, not to build the parser."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defense import (
    MAX_CONFIDENCE_BUCKETS,
    MAX_ENSEMBLE_SIZE,
    DefenseParams,
    InvalidParameters,
    NoiseMode,
    OutputMode,
    Sensitivity,
)
from ..defense.params import DESCRIPTIONS, PARAMETER_NAMES

if TYPE_CHECKING:
    from ..settings import Settings
    from ..tenants import TenantStore

_PARAMS = PARAMETER_NAMES
_LIMITS = ("rate_limit_per_second", "rows_per_second", "repeated_queries_per_minute")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("tenants", help="manage tenants and their API keys")
    p.add_argument("--database-url", help="tenant store URL (default: DYNANOISE_DATABASE_URL)")
    p.add_argument(
        "--models-dir",
        type=Path,
        help="models that --allowed-models may name (default: DYNANOISE_MODELS_DIR)",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="create a tenant and print its API key once")
    add.add_argument("name")
    _add_param_options(add, defaults=True)
    add.set_defaults(handler=_add)

    update = actions.add_parser("update", help="change a tenant's parameters")
    update.add_argument("name")
    _add_param_options(update, defaults=False)
    update.set_defaults(handler=_update)

    lst = actions.add_parser("list", help="list tenants (never their keys)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(handler=_list)

    rotate = actions.add_parser("rotate-key", help="issue a new API key; the old one stops working")
    rotate.add_argument("name")
    rotate.set_defaults(handler=_rotate)

    remove = actions.add_parser("remove", help="delete a tenant")
    remove.add_argument("name")
    remove.set_defaults(handler=_remove)


def _add_param_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    d = DefenseParams()

    def default(value: Any) -> Any:
        return value if defaults else None

    p.add_argument("--base-variance", type=float, default=default(d.base_variance), help="sigma0^2")
    p.add_argument("--lambda-scale", type=float, default=default(d.lambda_scale), help="lambda")
    p.add_argument("--temperature", type=float, default=default(d.temperature), help="T")
    p.add_argument(
        "--ensemble-size",
        type=int,
        default=default(d.ensemble_size),
        help=f"M, 1..{MAX_ENSEMBLE_SIZE}",
    )
    p.add_argument(
        "--sensitivity",
        choices=[s.value for s in Sensitivity],
        default=default(d.sensitivity.value),
    )
    p.add_argument(
        "--noise-mode", choices=[m.value for m in NoiseMode], default=default(d.noise_mode.value)
    )
    p.add_argument(
        "--output-mode",
        choices=[m.value for m in OutputMode],
        default=default(d.output_mode.value),
        help=DESCRIPTIONS["output_mode"],
    )
    p.add_argument(
        "--confidence-buckets",
        type=int,
        default=default(d.confidence_buckets),
        help=f"B, 1..{MAX_CONFIDENCE_BUCKETS}: confidence levels of the coarse mode",
    )
    p.add_argument(
        "--allowed-models",
        help="comma-separated model names this tenant may use; 'all' (default) for every model",
    )
    p.add_argument(
        "--rate-limit", type=float, dest="rate_limit_per_second", help="requests per second"
    )
    p.add_argument(
        "--rows-per-second",
        type=float,
        dest="rows_per_second",
        help="input rows per second, summed over requests (a request of n rows costs n)",
    )
    p.add_argument(
        "--repeated-queries-per-minute",
        type=float,
        dest="repeated_queries_per_minute",
        help="near-duplicate queries per minute (exact or imperceptibly changed repeats)",
    )


def _settings() -> Settings:
    from ..settings import Settings

    return Settings()


def _store(args: argparse.Namespace) -> TenantStore:
    from ..tenants import TenantStore

    store = TenantStore(args.database_url or _settings().database_url)
    store.migrate()
    return store


def _allow_clean_outputs() -> bool:
    """DYNANOISE_ALLOW_CLEAN_OUTPUTS, read as the server reads it."""
    return _settings().allow_clean_outputs


def _models(value: str | None) -> list[str] | None:
    if value is None or value.strip() == "all":
        return None
    return [m.strip() for m in value.split(",") if m.strip()]


def model_names(models_dir: Path) -> list[str]:
    """The models of ``models_dir`` a server would serve: its directories whose
    manifest reads (without loading the ONNX files)."""
    from ..runtime.manifest import MANIFEST_FILE, ManifestError, load_manifest

    names = []
    for manifest in sorted(models_dir.glob(f"*/{MANIFEST_FILE}")):
        try:
            names.append(load_manifest(manifest.parent).name)
        except (ManifestError, OSError):
            continue
    return names


def unknown_models(models: list[str] | None, models_dir: Path) -> str | None:
    """Why ``models`` (an --allowed-models list) is refused, as the admin API refuses
    it; None when every name is a model of ``models_dir``."""
    unknown = sorted(set(models or ()) - set(model_names(models_dir)))
    if not unknown:
        return None
    return f"unknown models in allowed_models: {unknown} (models directory {models_dir})"


def _models_dir(args: argparse.Namespace) -> Path:
    directory: Path = args.models_dir or _settings().models_dir
    return directory


def _fail(message: str) -> int:
    print(f"dynanoise tenants: {message}", file=sys.stderr)
    return 1


def _add(args: argparse.Namespace) -> int:
    from ..tenants import InvalidTenantName, TenantExists

    allowed = _models(args.allowed_models)
    if refused := unknown_models(allowed, _models_dir(args)):
        return _fail(refused)
    with _store(args) as store:
        try:
            params = DefenseParams(**{k: getattr(args, k) for k in _PARAMS})
            tenant, key = store.create(
                args.name,
                params,
                allowed,
                args.rate_limit_per_second,
                args.rows_per_second,
                args.repeated_queries_per_minute,
                allow_clean_outputs=_allow_clean_outputs(),
            )
        except (InvalidParameters, InvalidTenantName, TenantExists, ValueError) as exc:
            return _fail(str(exc))
    print(f"Created tenant {tenant.name!r}. API key (shown once, store it now):")
    print(key)
    return 0


def _update(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {k: getattr(args, k) for k in _PARAMS if getattr(args, k) is not None}
    if args.allowed_models is not None:
        changes["allowed_models"] = _models(args.allowed_models)
        if refused := unknown_models(changes["allowed_models"], _models_dir(args)):
            return _fail(refused)
    for limit in _LIMITS:
        if getattr(args, limit) is not None:
            changes[limit] = getattr(args, limit)
    if not changes:
        return _fail("nothing to update: give at least one option")
    from ..tenants import TenantNotFound

    with _store(args) as store:
        try:
            tenant = store.update(args.name, allow_clean_outputs=_allow_clean_outputs(), **changes)
        except TenantNotFound:
            return _fail(f"no tenant named {args.name!r}")
        except (InvalidParameters, ValueError) as exc:
            return _fail(str(exc))
    print(json.dumps(tenant.to_public().as_dict(), indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = [t.to_public().as_dict() for t in store.list()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("name", *_PARAMS, "allowed_models", *_LIMITS)
    table = [[str(r[c]) if r[c] is not None else "-" for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in table)) if table else len(c)
        for i, c in enumerate(columns)
    ]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from ..tenants import TenantNotFound

    with _store(args) as store:
        try:
            key = store.rotate_key(args.name)
        except TenantNotFound:
            return _fail(f"no tenant named {args.name!r}")
    print(f"New API key for {args.name!r} (the old one no longer works):")
    print(key)
    if (key_file := _demo_key_file(args)) is not None and key_file.exists():
        from .serve import write_demo_key

        write_demo_key(key_file, key)
        print(f"(also written to {key_file})")
    return 0


def _demo_key_file(args: argparse.Namespace) -> Path | None:
    """The demo key file of this store, for the demo tenant only."""
    from .serve import DEMO_TENANT, demo_key_path

    if args.name != DEMO_TENANT:
        return None
    return demo_key_path(_settings(), args.database_url)


def _remove(args: argparse.Namespace) -> int:
    from ..tenants import TenantNotFound

    with _store(args) as store:
        try:
            store.delete(args.name)
        except TenantNotFound:
            return _fail(f"no tenant named {args.name!r}")
    print(f"Removed tenant {args.name!r}.")
    if (key_file := _demo_key_file(args)) is not None and key_file.exists():
        key_file.unlink()  # its key no longer works
        print(f"(removed {key_file})")
    return 0

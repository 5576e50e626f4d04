"""`dynanoise models calibrate-outputs DIR`: write the held-out answer tables of the
lossy output modes (calibrated_label, coarse) into a model's manifest.

The tables are fitted on rows of the model's data set that it never trained on
(neither members nor the test split nor the paper's evaluation non-members, as the
manifest's split records them); needs the audit extra to load the data set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("models", help="manage model directories")
    commands = p.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    calibrate = commands.add_parser(
        "calibrate-outputs",
        help="fit the calibrated_label / coarse answer tables on held-out rows and write "
        "them into DIR/manifest.json (needs .[audit])",
    )
    calibrate.add_argument("model_dir", type=Path, metavar="DIR")
    calibrate.add_argument("--data-dir", type=Path, help="local data directory, if needed")
    calibrate.set_defaults(handler=run_calibrate_outputs)


def run_calibrate_outputs(args: argparse.Namespace) -> int:
    try:
        import numpy as np

        from ..audit.calibration import manifest_with_calibration
        from ..audit.config import AuditConfig
        from ..audit.target import load_target
        from ..audit.training import write_manifest
    except ModuleNotFoundError as exc:
        print(f"dynanoise models calibrate-outputs needs '.[audit]': {exc}", file=sys.stderr)
        return 2
    path = args.model_dir / "manifest.json"
    try:
        target = load_target(AuditConfig(data_dir=args.data_dir), args.model_dir)
        model = target.model
        manifest = manifest_with_calibration(
            json.loads(path.read_text()),
            lambda x: model.logits(model.validate(np.asarray(x))),
            target.dataset,
            target.split,
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"dynanoise models calibrate-outputs: {exc}", file=sys.stderr)
        return 2
    write_manifest(args.model_dir, manifest)
    block = manifest["calibration"]
    print(
        f"wrote {path}: answer tables for 1..{len(block['tables'])} confidence buckets "
        f"from {block['rows']} held-out rows (accuracy there {block['accuracy']:.4f})"
    )
    return 0

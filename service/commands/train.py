"""`dynanoise train --dataset NAME --out models/NAME`: train a target model with torch,
export it to ONNX and write its manifest (split, seed, measured leakage)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "train", help="train a classifier (torch) and export it to ONNX + manifest (needs .[audit])"
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="digits, mnist5k, breast_cancer, thyroid, synthetic, cifar10, imagenet10, sst2",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory, e.g. models/NAME")
    p.add_argument(
        "--data-dir", type=Path, help="local copy of the data set (cifar10, imagenet10, sst2)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", help="mlp, cnn or text (default: by data set)")
    p.add_argument(
        "--hidden", type=lambda s: [int(v) for v in s.split(",")], help="MLP widths, e.g. 256,256"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument(
        "--max-members", type=int, help="cap the target's training set (more overfitting)"
    )
    p.add_argument(
        "--name", help="model name in the manifest (default: the output directory's name)"
    )
    p.add_argument("--version", default="1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..audit.training import train_and_export
    except ModuleNotFoundError as exc:
        print(
            f"dynanoise train needs the audit extra (pip install '.[audit]'): {exc}",
            file=sys.stderr,
        )
        return 2
    options = {
        k: getattr(args, k)
        for k in (
            "arch",
            "hidden",
            "epochs",
            "lr",
            "batch_size",
            "weight_decay",
            "max_members",
            "data_dir",
        )
        if getattr(args, k) is not None
    }
    try:
        manifest = train_and_export(
            args.dataset,
            args.out,
            seed=args.seed,
            name=args.name,
            version=args.version,
            progress=not args.no_progress,
            **options,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"dynanoise train: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {"model": manifest["name"], "out": str(args.out), **manifest.get("metrics", {})},
            indent=2,
        )
    )
    return 0

"""`dynanoise models`: add an ONNX classifier to a models directory, check a model
directory, and write the held-out answer tables of the lossy output modes.

`add` inspects the graph (input, output, batch axis, softmax inside) and writes the
manifest; `check` compares a manifest with its graph, one line per problem;
`calibrate-outputs` fits the calibrated_label / coarse tables, either on held-out rows
of an .npz (``--data``: arrays x and y) or, for the audit's own models, on the rows of
their data set that they never trained on (needs the audit extra).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("models", help="manage model directories")
    commands = p.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")

    add = commands.add_parser(
        "add",
        help="copy an ONNX classifier into MODELS_DIR/NAME/model.onnx and write its manifest",
    )
    add.add_argument("model_file", type=Path, metavar="PATH.onnx")
    add.add_argument("--name", required=True, help="the model's name in URLs")
    add.add_argument(
        "--labels", required=True, help="class labels, comma-separated, in output order"
    )
    add.add_argument("--input-name", help="the graph input to feed (needed when it has several)")
    add.add_argument("--output-name", help="the graph output to read (default: the only (n, k))")
    add.add_argument(
        "--output",
        choices=("logits", "probabilities"),
        help="what the output holds (default: detected; probabilities are served as their log)",
    )
    add.add_argument("--models-dir", type=Path, help="default: DYNANOISE_MODELS_DIR or ./models")
    add.add_argument("--version", default="1")
    add.add_argument("--description", default="")
    add.add_argument("--replace", action="store_true", help="overwrite an existing model")
    add.set_defaults(handler=run_add)

    check = commands.add_parser(
        "check", help="validate a model directory: manifest against graph (exit 0 or 2)"
    )
    check.add_argument("model_dir", type=Path, metavar="DIR")
    check.set_defaults(handler=run_check)

    calibrate = commands.add_parser(
        "calibrate-outputs",
        help="fit the calibrated_label / coarse answer tables on held-out rows and write "
        "them into DIR/manifest.json (--data rows.npz; else the audit's data set, "
        "needs .[audit])",
    )
    calibrate.add_argument("model_dir", type=Path, metavar="DIR")
    calibrate.add_argument(
        "--data",
        type=Path,
        metavar="HELD_OUT.npz",
        help="held-out rows the model never trained on: arrays x (n, ...) and y (n,), "
        "y as class indices or labels",
    )
    calibrate.add_argument("--data-dir", type=Path, help="local data directory, if needed")
    calibrate.set_defaults(handler=run_calibrate_outputs)


def run_add(args: argparse.Namespace) -> int:
    from ..runtime.inspect import InspectError, manifest_for
    from ..runtime.manifest import write_manifest
    from ..runtime.session import ModelLoadError, OnnxClassifier

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    models_dir = args.models_dir or _default_models_dir()
    model_dir = models_dir / args.name
    if not args.model_file.is_file():
        return _fail("add", f"{args.model_file}: no such file")
    if (model_dir / "manifest.json").exists() and not args.replace:
        return _fail("add", f"{model_dir} already holds a model (--replace overwrites it)")
    try:
        manifest, note = manifest_for(
            args.model_file,
            name=args.name,
            labels=labels,
            input_name=args.input_name,
            output_name=args.output_name,
            output_kind=args.output,
            version=args.version,
            description=args.description,
        )
    except InspectError as exc:
        return _fail("add", f"{args.model_file}: {exc}")
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.model_file, model_dir / "model.onnx")
    write_manifest(model_dir, manifest)
    try:
        OnnxClassifier.load(model_dir)
    except ModelLoadError as exc:  # inspection and loading disagree: a bug, say so
        return _fail("add", str(exc))
    spec = manifest["input"]
    batch = f"fixed batch {spec['fixed_batch']}" if "fixed_batch" in spec else "any batch"
    print(
        f"added {args.name} to {model_dir}: input {spec['name']!r} {spec['dtype']} "
        f"{spec['shape']} ({batch}), {len(labels)} classes; {note}"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..runtime.inspect import check_model_dir

    problems = check_model_dir(args.model_dir)
    for problem in problems:
        print(f"{args.model_dir}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.model_dir}: ok")
    return 0


def run_calibrate_outputs(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _calibrate_from_npz(args.model_dir, args.data)
    try:
        import numpy as np

        from ..audit.calibration import manifest_with_calibration
        from ..audit.config import AuditConfig
        from ..audit.target import load_target
    except ModuleNotFoundError as exc:
        print(
            f"dynanoise models calibrate-outputs needs '.[audit]' without --data: {exc}",
            file=sys.stderr,
        )
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
        return _fail("calibrate-outputs", str(exc))
    return _write_calibration(args.model_dir, manifest)


def _calibrate_from_npz(model_dir: Path, data: Path) -> int:
    import numpy as np

    from ..defense.calibrated import OutputCalibration
    from ..errors import BadInput
    from ..runtime.session import ModelLoadError, OnnxClassifier

    try:
        model = OnnxClassifier.load(model_dir)
        with np.load(data, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
        logits = model.logits(model.validate(np.asarray(x)))
        labels = _class_indices(np.asarray(y), model.manifest.labels)
        calibration = OutputCalibration.fit(logits, labels)
    except (ModelLoadError, BadInput, OSError, KeyError, ValueError) as exc:
        detail = f"{data} has no array {exc}" if isinstance(exc, KeyError) else str(exc)
        return _fail("calibrate-outputs", detail)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["calibration"] = calibration.as_dict()
    return _write_calibration(model_dir, manifest)


def _class_indices(y: Any, labels: list[str]) -> Any:
    """y as class indices: integers in [0, k) as they are, labels mapped to their index."""
    import numpy as np

    if y.dtype.kind in "iu":
        if y.size and (y.min() < 0 or y.max() >= len(labels)):
            raise ValueError(f"y holds class indices outside [0, {len(labels)})")
        return y
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in y} - index.keys())
    if unknown:
        raise ValueError(f"y holds labels the manifest does not list: {unknown[:5]}")
    return np.array([index[str(v)] for v in y], dtype=np.int64)


def _write_calibration(model_dir: Path, manifest: dict[str, Any]) -> int:
    from ..runtime.manifest import write_manifest

    path = write_manifest(model_dir, manifest)
    block = manifest["calibration"]
    print(
        f"wrote {path}: answer tables for 1..{len(block['tables'])} confidence buckets "
        f"from {block['rows']} held-out rows (accuracy there {block['accuracy']:.4f})"
    )
    return 0


def _default_models_dir() -> Path:
    from ..settings import Settings

    return Path(Settings().models_dir)


def _fail(command: str, message: str) -> int:
    print(f"dynanoise models {command}: {message}", file=sys.stderr)
    return 2

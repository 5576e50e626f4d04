#!/usr/bin/env python
"""Measure a keyed neighbourhood-majority label (LDL-style) against label-only attacks.

LDL (arXiv 2212.01688) answers a label query with the majority label over a
neighbourhood of the query instead of the model's own label:

    f~(x) = argmax_c  sum_{j=1..K} 1[f(x + r_j) = c],   r_j = s * range * z_j,

where z_j ~ N(0, I) are drawn from a generator seeded by HMAC-SHA256(secret,
round(64 (x - low) / range)): the same (or a near-same) query always sees the same
neighbourhood, so the answer is deterministic and repeating a query gains nothing.
Ties go to the class with the highest mean softmax over the neighbourhood.

On digits with the audit's leave-one-out population this measures, for the clean
labels and for each (s, K): the boundary-distance attack AUC (the attacker queries the
defended oracle, so this is the adaptive attack), the label-gap AUC, Choquette-Choo's
label-robustness attack (the attacker averaging over its own perturbations), accuracy
on the rows outside the pool, and the per-row latency of the shipped ONNX model with
and without the neighbourhood.

    python scripts/neighbourhood_labels.py --out docs/neighbourhood-labels
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from service.audit.attacks.boundary import boundary_distance, label_robustness
from service.audit.datasets import Dataset, load_dataset
from service.audit.evaluation import input_bounds
from service.audit.population import Population, population_pool, train_population
from service.audit.seeds import stable_rng
from service.audit.statistics import repeated_attack_metrics
from service.audit.training import RECIPES, predict_logits
from service.runtime import OnnxClassifier

Forward = Callable[[NDArray[np.float32]], NDArray[np.float32]]
"""inputs (n, D) float32 -> logits (n, k)."""

QUANTUM_STEPS = 64
"""The key sees the query rounded to 1 / QUANTUM_STEPS of the input range."""
MEMBERS_PER_MODEL = 100
NOISE_FRACTIONS = (0.02, 0.05, 0.1)
SAMPLE_COUNTS = (8, 32)
MARKER = "<!-- generated below: text above this line is kept when the script reruns -->"


@dataclass(frozen=True)
class Neighbourhood:
    """The keyed neighbourhood: r_j = noise_fraction * (high - low) * z_j, j < n_samples."""

    secret: bytes
    noise_fraction: float
    n_samples: int
    low: float
    high: float

    @property
    def name(self) -> str:
        return f"s={self.noise_fraction:g},K={self.n_samples}"


def keyed_normals(x: NDArray[Any], hood: Neighbourhood) -> NDArray[np.float32]:
    """(n, K, D) standard normals z_j, seeded per row by HMAC-SHA256(secret, quantized row).

    The draws for K are a prefix of those for any larger K (one stream per row).
    """
    span = hood.high - hood.low
    steps = np.rint((np.asarray(x, np.float64) - hood.low) / span * QUANTUM_STEPS)
    quantized = np.clip(steps, -(2**15), 2**15 - 1).astype("<i2")
    out = np.empty((len(x), hood.n_samples, x.shape[1]), dtype=np.float32)
    for i, row in enumerate(quantized):
        digest = hmac.new(hood.secret, row.tobytes(), hashlib.sha256).digest()
        rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
        out[i] = rng.standard_normal((hood.n_samples, x.shape[1]), dtype=np.float32)
    return out


def majority_vote(logits: NDArray[np.float32]) -> NDArray[np.int64]:
    """(n, K, k) logits -> (n,) labels: most votes, ties to the highest mean softmax."""
    n_classes = logits.shape[-1]
    votes = (logits.argmax(axis=-1)[..., None] == np.arange(n_classes)).sum(axis=1)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=-1, keepdims=True)
    # Mean probabilities are < 1, so they only break ties between equal vote counts.
    return np.asarray((votes + probs.mean(axis=1)).argmax(axis=1), dtype=np.int64)


def neighbourhood_labels(
    forward: Forward, x: NDArray[Any], hood: Neighbourhood
) -> NDArray[np.int64]:
    """f~(x) = majority_j f(x + r_j) over the keyed neighbourhood; K forward rows per query."""
    x32 = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    noise = keyed_normals(x32, hood) * np.float32(hood.noise_fraction * (hood.high - hood.low))
    points = (x32[:, None, :] + noise).reshape(-1, x32.shape[1])
    logits = forward(points).reshape(len(x32), hood.n_samples, -1)
    return majority_vote(logits)


def _torch_forward(model: torch.nn.Module) -> Forward:
    def forward(x: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.no_grad():
            return predict_logits(model, np.asarray(x, np.float32), batch_size=16_384)

    return forward


def _label_oracle(forward: Forward, hood: Neighbourhood | None) -> Callable[[Any], Any]:
    def oracle(x: NDArray[Any]) -> NDArray[np.int64]:
        flat = np.asarray(x, np.float32).reshape(len(x), -1)
        if hood is None:
            return np.asarray(forward(flat).argmax(axis=1), dtype=np.int64)
        return neighbourhood_labels(forward, flat, hood)

    return oracle


def evaluate_setting(
    population: Population,
    dataset: Dataset,
    outside: NDArray[np.int64],
    hood: Neighbourhood | None,
    *,
    seed: int,
    n_bootstrap: int,
    robustness: bool,
) -> dict[str, Any]:
    """Attack AUCs (boundary, gap, robustness) and outside-pool accuracy for one oracle."""
    bounds = input_bounds(dataset)
    pool = population.pool
    # Common random numbers: every setting sees the same attack directions.
    boundary_rng = stable_rng(seed, "label-only boundary")
    robust_rng = stable_rng(seed, "label robustness")
    boundary, robust, gap, accuracy = [], [], [], []
    boundary_cost = robust_cost = 0
    for model in population.models:
        oracle = _label_oracle(_torch_forward(model), hood)
        result = boundary_distance(oracle, pool.x, pool.y, rng=boundary_rng, bounds=bounds)
        boundary.append(result.scores)
        boundary_cost = result.queries_per_row
        if robustness:
            noisy = label_robustness(oracle, pool.x, pool.y, rng=robust_rng, bounds=bounds)
            robust.append(noisy.scores)
            robust_cost = noisy.queries_per_row
        gap.append((oracle(pool.x) == pool.y).astype(np.float64))
        accuracy.append(float(np.mean(oracle(dataset.x[outside]) == dataset.y[outside])))

    def metrics(scores: list[NDArray[np.float64]], name: str) -> dict[str, Any]:
        return repeated_attack_metrics(
            np.stack(scores)[None],
            population.in_mask,
            rng=stable_rng(seed, name, "bootstrap"),
            n_bootstrap=n_bootstrap,
        )

    return {
        "setting": "clean" if hood is None else hood.name,
        "noise_fraction": None if hood is None else hood.noise_fraction,
        "n_samples": None if hood is None else hood.n_samples,
        "boundary": {"queries_per_row": boundary_cost, **metrics(boundary, "boundary")},
        "label_gap": {"queries_per_row": 1, **metrics(gap, "gap")},
        "robustness": (
            {"queries_per_row": robust_cost, **metrics(robust, "robustness")}
            if robustness
            else None
        ),
        "accuracy_outside_pool": float(np.mean(accuracy)),
        "accuracy_outside_pool_by_model": accuracy,
    }


def _per_row_seconds(run: Callable[[], object], rows: int, min_seconds: float = 0.5) -> float:
    """Median per-row time over repeated timed blocks of ``run``."""
    run()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(times) < 5:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / rows


def _answer(
    forward: Forward, x: NDArray[np.float32], hood: Neighbourhood | None
) -> Callable[[], object]:
    """A zero-argument call that labels ``x`` (clean when ``hood`` is None)."""
    if hood is None:
        return lambda: forward(x).argmax(axis=1)
    return lambda: neighbourhood_labels(forward, x, hood)


def measure_latency(
    model_dir: Path, x: NDArray[np.float32], hoods: Sequence[Neighbourhood]
) -> list[dict[str, Any]]:
    """Per-row time of the shipped ONNX model, clean and through each neighbourhood size."""
    model = OnnxClassifier.load(model_dir)
    rows = []
    for batch in (1, 64):
        chunk = np.ascontiguousarray(x[:batch], dtype=np.float32)
        clean = _per_row_seconds(_answer(model.logits, chunk, None), batch)
        rows.append({"batch": batch, "setting": "clean", "per_row_us": clean * 1e6, "ratio": 1.0})
        seen: set[int] = set()
        for hood in hoods:
            if hood.n_samples in seen:
                continue
            seen.add(hood.n_samples)
            defended = _per_row_seconds(_answer(model.logits, chunk, hood), batch)
            expanded = np.repeat(chunk, hood.n_samples, axis=0)
            forward_only = _per_row_seconds(_answer(model.logits, expanded, None), batch)
            rows.append(
                {
                    "batch": batch,
                    "setting": f"K={hood.n_samples}",
                    "per_row_us": defended * 1e6,
                    "forward_only_per_row_us": forward_only * 1e6,
                    "ratio": defended / clean,
                }
            )
    return rows


def _ci(block: dict[str, Any] | None) -> str:
    if block is None:
        return "n/a"
    low, high = block["auc_ci"]
    return f"{block['auc']:.3f} [{low:.3f}, {high:.3f}]"


def render_markdown(report: dict[str, Any]) -> str:
    """The generated part of the report: the tables and the command."""
    lines = [
        MARKER,
        "",
        "## Attacks and accuracy",
        "",
        f"digits, leave-one-out population of {report['population']} models, pool of "
        f"{report['pool_rows']} rows, m = {report['members_per_model']} members per model "
        f"({report['member_pairs']} member / {report['non_member_pairs']} non-member pairs); "
        f"AUC with 95 % cluster-bootstrap interval. Accuracy: mean over the models on the "
        f"{report['outside_rows']} rows outside the pool. s is the noise scale per pixel as "
        "a fraction of the input range [0, 1]; K the neighbourhood size.",
        "",
    ]
    first = report["settings"][0]
    robust = first["robustness"] is not None
    header = (
        f"| labels | boundary AUC ({first['boundary']['queries_per_row']} q/row) | label-gap AUC "
    )
    if robust:
        header += f"| robustness AUC ({first['robustness']['queries_per_row']} q/row) "
    lines += [header + "| accuracy | forward passes / query |", "|---" * (6 if robust else 5) + "|"]
    for row in report["settings"]:
        passes = 1 if row["n_samples"] is None else row["n_samples"]
        cells = [row["setting"], _ci(row["boundary"]), _ci(row["label_gap"])]
        if robust:
            cells.append(_ci(row["robustness"]))
        cells += [f"{row['accuracy_outside_pool']:.3f}", str(passes)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Latency (shipped ONNX model, onnxruntime CPU, 1 intra-op thread)",
        "",
        "Per-row time of the label answer; the neighbourhood includes the HMAC, the keyed "
        "draws and the vote. `forward only` is the ONNX call on the K-fold batch alone.",
        "",
        "| batch | labels | per row (us) | forward only (us) | ratio to clean |",
        "|---|---|---|---|---|",
    ]
    for row in report["latency"]:
        forward = row.get("forward_only_per_row_us")
        lines.append(
            f"| {row['batch']} | {row['setting']} | {row['per_row_us']:.1f} "
            f"| {'' if forward is None else f'{forward:.1f}'} | {row['ratio']:.1f}x |"
        )
    lines += [
        "",
        "## How it was made",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Runtime {report['runtime_s']:.0f} s on {report['threads']} torch threads; data in "
        "`neighbourhood_labels.json`.",
        "",
    ]
    return "\n".join(lines)


def write_report(out: Path, report: dict[str, Any]) -> None:
    """JSON first, then the markdown (text above the marker in an existing file is kept)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "neighbourhood_labels.json").write_text(json.dumps(report, indent=1) + "\n")
    path = out / "neighbourhood_labels.md"
    head = "# Keyed neighbourhood-majority labels vs label-only attacks (digits)\n\n"
    if path.is_file() and MARKER in path.read_text():
        head = path.read_text().split(MARKER)[0]
    path.write_text(head + render_markdown(report))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=16, help="models (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--noise-fractions", type=float, nargs="+", default=NOISE_FRACTIONS)
    parser.add_argument("--samples", type=int, nargs="+", default=SAMPLE_COUNTS)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument(
        "--robustness", action="store_true", help="also run the label-robustness attack (slow)"
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models/digits"))
    args = parser.parse_args(argv)
    started = time.perf_counter()

    dataset = load_dataset("digits")
    bounds = input_bounds(dataset)
    assert bounds is not None
    every_row = np.arange(len(dataset), dtype=np.int64)
    pool_rows = population_pool(
        every_row, MEMBERS_PER_MODEL, stable_rng(args.seed, "population pool")
    )
    outside = np.setdiff1d(every_row, pool_rows)
    print(f"training {args.population} models on halves of {len(pool_rows)} rows", flush=True)
    population = train_population(
        dataset, pool_rows, args.population, RECIPES["digits"], seed=args.seed, progress=False
    )
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)

    # A fixed, published secret: the attacker's AUC does not depend on knowing it here.
    secret = hashlib.sha256(f"neighbourhood-labels-{args.seed}".encode()).digest()
    hoods = [
        Neighbourhood(secret, fraction, k, bounds[0], bounds[1])
        for fraction in args.noise_fractions
        for k in args.samples
    ]
    settings = []
    for hood in [None, *hoods]:
        t0 = time.perf_counter()
        row = evaluate_setting(
            population,
            dataset,
            outside,
            hood,
            seed=args.seed,
            n_bootstrap=args.bootstrap,
            robustness=args.robustness,
        )
        settings.append(row)
        print(
            f"{row['setting']:>14}: boundary {_ci(row['boundary'])}  gap {_ci(row['label_gap'])}"
            f"  robustness {_ci(row['robustness'])}  acc {row['accuracy_outside_pool']:.3f}"
            f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    print("latency", flush=True)
    latency = measure_latency(args.model_dir, dataset.x[outside[:64]], hoods)
    for entry in latency:
        print(
            f"  batch {entry['batch']:>2} {entry['setting']:>5}: "
            f"{entry['per_row_us']:.1f} us/row ({entry['ratio']:.1f}x)",
            flush=True,
        )

    n_in = int(population.in_mask.sum())
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "seed": args.seed,
        "population": args.population,
        "pool_rows": len(pool_rows),
        "members_per_model": MEMBERS_PER_MODEL,
        "member_pairs": n_in,
        "non_member_pairs": int(population.in_mask.size - n_in),
        "outside_rows": len(outside),
        "quantum_steps": QUANTUM_STEPS,
        "settings": settings,
        "latency": latency,
        "threads": torch.get_num_threads(),
        "runtime_s": time.perf_counter() - started,
    }
    write_report(args.out, report)
    print(f"wrote {args.out / 'neighbourhood_labels.md'} in {report['runtime_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

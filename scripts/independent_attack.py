#!/usr/bin/env python
"""Independent LiRA membership-inference attack against a live DynaNoise server.

A cross-check of the project's own audit (``service/audit``): this file imports
nothing from the ``service`` package. Everything (data loading, shadow training,
the defense simulation, LiRA scoring, the HTTP client) is written here with
numpy, torch, scikit-learn and httpx only.

Usage::

    .venv/bin/python scripts/independent_attack.py \\
        --endpoint http://127.0.0.1:8123 --api-key KEY --model digits \\
        --manifest models/digits/manifest.json --queries 16 --shadows 32 --seed 0 \\
        [--mode near-duplicate|repeat] [--max-batch 256] [--out result.json] \\
        [--base-variance 0.3 --lambda-scale 2.0 --temperature 10 --noise-mode fresh|keyed] \\
        [--output-mode dynanoise|calibrated_label] \\
        [--clean-shadows] [--variance pooled|global|per-example] [--shadow-cache FILE.npz]

What it does:

1. Reads the manifest (``trained_on``, ``training``, ``split``) and loads the data
   set itself (only ``digits``: sklearn ``load_digits``, pixel / 16 as float32, 64
   features).
2. Evaluation pool: the m members of ``split.members`` plus m non-members,
   ``np.random.default_rng(seed).permutation(np.sort(non_members))[:m]``.
   Members first, then non-members.
3. Trains K = --shadows shadow MLPs with torch (manifest hidden widths, ReLU, Adam,
   lr / epochs / batch size / weight decay of the manifest), each on a random
   subset of the pool such that every pool row is in exactly K/2 shadows.
   ``--shadow-cache`` stores the shadows' clean pool logits (keyed by seed, K and
   recipe) so several runs can share one training.
4. Queries the server: N = --queries copies of every pool row. ``near-duplicate``:
   every copy has one non-zero feature moved up by one (or more, for N beyond the
   number of non-zero features) float32 ulp with ``np.nextafter``, so all copies
   have distinct bytes yet are imperceptibly changed; ``repeat``: exact copies.
   Rows are packed --max-batch to a request (POST {endpoint}/v1/models/{model}/predict,
   ``{"instances": [...]}``). Logits are recovered as T * log(p), centred per row,
   then averaged over the N answers.
5. Passes every shadow's clean logits through this file's own DynaNoise
   (R = 1 - H(softmax z) / log k, eps ~ N(0, sigma0^2 (1 + lambda R) I), answer
   softmax((z + eps) / T) rounded to float32), N times with fresh draws, and
   averages the recovered logits the same way. Keyed noise on near-duplicates is
   a fresh draw per copy; keyed noise on exact repeats is one draw repeated, so
   that case is simulated with a single draw (``effective_draws`` in the output).
   ``--clean-shadows`` skips the simulation (shadow logits used as they are).
6. Scores with LiRA (Carlini et al. 2022) on phi = z_y - logsumexp_{i != y} z_i of
   the averaged logits: online, log N(phi; mu_in, s_in^2) - log N(phi; mu_out,
   s_out^2); offline, log Pr[Z <= phi] with Z ~ N(mu_out, s_out^2) (the paper's
   one-sided test). Per-example means; the variance is global when K < 64 (as in
   the paper) and per-example otherwise. ``--variance pooled`` (the default global
   choice) is the mean over examples of the per-example variance; ``global`` is
   the variance of all in (resp. out) values together, between-example spread
   included, as Carlini et al.'s code computes it.

Prints a JSON report on stdout (and writes it to --out): AUC (sklearn
roc_auc_score) and TPR at 1 % FPR (largest TPR with FPR <= 0.01 on the empirical
ROC, no interpolation) for online and offline LiRA, plus a plain phi-threshold
AUC, the counts, the mode and the number of requests sent. Progress goes to
stderr.

A no-defense reference: run it against a tenant with base_variance 0 and
temperature 1 (the server must run with DYNANOISE_ALLOW_CLEAN_OUTPUTS=true to accept
and serve such a tenant) with ``--base-variance 0 --temperature 1``; the server then
answers softmax(z).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

# ----------------------------------------------------------------------------- utils


def log(msg: str) -> None:
    print(f"[independent-attack] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


def load_dataset(trained_on: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    name = trained_on.get("dataset")
    if name != "digits":
        raise SystemExit(f"error: only the 'digits' data set is supported, the manifest says {name!r}")
    prep = str(trained_on.get("preprocessing", ""))
    if "16" not in prep or "64" not in prep:
        raise SystemExit(f"error: unexpected digits preprocessing {prep!r}; expected 'pixel / 16 ..., flattened to 64'")
    if trained_on.get("options"):
        raise SystemExit(f"error: digits options {trained_on['options']!r} are not supported")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 64)
    y = np.asarray(bunch.target, dtype=np.int64)
    expected = trained_on.get("n_samples")
    if expected is not None and int(expected) != len(y):
        raise SystemExit(f"error: manifest says {expected} samples, load_digits gives {len(y)}")
    return x, y


def evaluation_pool(split: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (members first) and ground truth (True = member)."""
    members = np.asarray(split["members"], dtype=np.int64)
    non_members = np.asarray(split["non_members"], dtype=np.int64)
    m = len(members)
    if len(non_members) < m:
        raise SystemExit(f"error: {len(non_members)} non-members for {m} members")
    chosen = np.random.default_rng(seed).permutation(np.sort(non_members))[:m]
    if np.intersect1d(members, chosen).size:
        raise SystemExit("error: the manifest's members and non-members overlap")
    rows = np.concatenate([members, chosen])
    truth = np.concatenate([np.ones(m, dtype=bool), np.zeros(m, dtype=bool)])
    return rows, truth


# ----------------------------------------------------------------------------- shadows


def build_mlp(in_features: int, n_classes: int, hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def train_one(
    x: np.ndarray, y: np.ndarray, recipe: dict[str, Any], n_classes: int, seed: int
) -> nn.Sequential:
    torch.manual_seed(seed)
    model = build_mlp(x.shape[1], n_classes, list(recipe.get("hidden", [256])))
    optimizer_name = str(recipe.get("optimizer", "adam")).lower()
    lr = float(recipe.get("lr", 1e-3))
    wd = float(recipe.get("weight_decay", 0.0))
    if optimizer_name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    elif optimizer_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    else:
        raise SystemExit(f"error: optimizer {optimizer_name!r} not supported")
    epochs = int(recipe.get("epochs", 100))
    batch = int(recipe.get("batch_size", 64))
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    n = len(yt)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


def shadow_assignment(n_rows: int, k: int, seed: int) -> np.ndarray:
    """in_mask (k, n_rows): each row in exactly k/2 shadows, chosen at random."""
    rng = np.random.default_rng([seed, 0x5AD0])
    mask = np.zeros((k, n_rows), dtype=bool)
    for j in range(n_rows):
        mask[rng.choice(k, size=k // 2, replace=False), j] = True
    return mask


def train_shadows(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    recipe: dict[str, Any],
    n_classes: int,
    k: int,
    seed: int,
    cache: Path | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Clean shadow logits on the pool (k, n, classes) float64 and the in-mask."""
    key = hashlib.sha256(
        json.dumps(
            {"seed": seed, "k": k, "recipe": recipe, "x": hashlib.sha256(x_pool.tobytes()).hexdigest(),
             "y": y_pool.tolist(), "v": 1},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    if cache is not None and cache.exists():
        data = np.load(cache)
        if str(data["key"]) == key:
            log(f"shadows: loaded {k} from cache {cache}")
            return data["logits"], data["mask"]
        log(f"shadows: cache {cache} is for other settings; retraining")
    mask = shadow_assignment(len(y_pool), k, seed)
    logits = np.zeros((k, len(y_pool), n_classes), dtype=np.float64)
    xt = torch.from_numpy(x_pool)
    t0 = time.perf_counter()
    for s in range(k):
        rows = np.flatnonzero(mask[s])
        model = train_one(x_pool[rows], y_pool[rows], recipe, n_classes, seed=seed * 100003 + s + 1)
        with torch.no_grad():
            logits[s] = model(xt).numpy().astype(np.float64)
        acc_in = float((logits[s][rows].argmax(1) == y_pool[rows]).mean())
        el = time.perf_counter() - t0
        log(f"shadow {s + 1}/{k}: {len(rows)} rows, train acc {acc_in:.3f}, {el:.1f}s elapsed")
    if cache is not None:
        np.savez(cache, key=np.array(key), logits=logits, mask=mask)
    return logits, mask


# ----------------------------------------------------------------------------- defense


def entropy_sensitivity(z: np.ndarray) -> np.ndarray:
    """R = 1 - H(softmax z) / log k, along the last axis, float64."""
    z = np.asarray(z, dtype=np.float64)
    s = z - z.max(axis=-1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=-1, keepdims=True))
    p = np.exp(logp)
    h = -(p * logp).sum(axis=-1)
    return np.clip(1.0 - h / math.log(z.shape[-1]), 0.0, 1.0)


def softmax_f32(a: np.ndarray, temperature: float) -> np.ndarray:
    s = (a - a.max(axis=-1, keepdims=True)) / temperature
    e = np.exp(s)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def recover_logits(p: np.ndarray, temperature: float) -> np.ndarray:
    """T * log(p), centred per row (float64)."""
    tiny = np.finfo(np.float32).smallest_subnormal
    lg = temperature * np.log(np.maximum(np.asarray(p, dtype=np.float64), tiny))
    return lg - lg.mean(axis=-1, keepdims=True)


def simulate_defense(
    z: np.ndarray,
    draws: int,
    base_variance: float,
    lambda_scale: float,
    temperature: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Average recovered logits of `draws` defended answers for each row of z (..., k)."""
    r = entropy_sensitivity(z)
    sigma = np.sqrt(base_variance * (1.0 + lambda_scale * r))[..., None, None]
    eps = rng.standard_normal((*z.shape[:-1], draws, z.shape[-1]))
    noisy = z[..., None, :] + sigma * eps
    p = softmax_f32(noisy, temperature)
    return recover_logits(p, temperature).mean(axis=-2)


def simulate_calibrated_label(z: np.ndarray, mask: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Recovered logits log p of a calibrated_label answer for every shadow (K, n, k):
    p = P(true class | predicted label), estimated (add-one smoothing) from the
    shadow's predictions on the pool rows it did not train on. Deterministic, so any
    number of near-duplicates gives this one answer."""
    k = z.shape[-1]
    predicted = z.argmax(axis=-1)
    answers = np.empty(z.shape, dtype=np.float32)
    for s in range(z.shape[0]):
        held_out = ~mask[s]
        counts = np.ones((k, k))
        np.add.at(counts, (predicted[s, held_out], y[held_out]), 1.0)
        table = counts / counts.sum(axis=1, keepdims=True)
        answers[s] = table[predicted[s]]
    return recover_logits(answers, 1.0)


# ----------------------------------------------------------------------------- queries


def make_copies(x: np.ndarray, n: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """(n, d) float32 copies of row x: exact, or each with one non-zero feature moved
    up by one or more float32 ulps (all distinct bytes)."""
    x = np.asarray(x, dtype=np.float32)
    copies = np.repeat(x[None, :], n, axis=0)
    if mode == "repeat":
        return copies
    nz = np.flatnonzero(x)
    if nz.size == 0:
        nz = np.arange(x.size)
    order = rng.permutation(nz)
    inf = np.float32(np.inf)
    for j in range(n):
        f = order[j % order.size]
        steps = 1 + j // order.size
        v = copies[j, f]
        for _ in range(steps):
            v = np.nextafter(v, inf, dtype=np.float32)
        copies[j, f] = v
    if len({c.tobytes() for c in copies}) != n:
        raise AssertionError("near-duplicate copies are not all distinct")
    return copies


def query_server(
    endpoint: str,
    api_key: str,
    model: str,
    rows: np.ndarray,
    max_batch: int,
    n_classes: int,
    timeout: float,
) -> tuple[np.ndarray, int]:
    """POST rows in batches; returns probabilities (n, k) float32 and requests sent."""
    url = f"{endpoint.rstrip('/')}/v1/models/{model}/predict"
    out = np.zeros((len(rows), n_classes), dtype=np.float32)
    sent = 0
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    with httpx.Client(timeout=timeout) as client:
        n_batches = math.ceil(len(rows) / max_batch)
        for b, start in enumerate(range(0, len(rows), max_batch)):
            chunk = rows[start : start + max_batch]
            # float32 -> exact Python float -> shortest repr: parses back to the same float32.
            body = json.dumps({"instances": chunk.astype(np.float32).tolist()})
            resp = client.post(url, content=body, headers=headers)
            sent += 1
            if resp.status_code != 200:
                raise SystemExit(
                    f"error: server answered {resp.status_code} to a batch of {len(chunk)}: {resp.text[:500]}"
                )
            preds = resp.json()["predictions"]
            if len(preds) != len(chunk):
                raise SystemExit(f"error: {len(preds)} predictions for {len(chunk)} instances")
            out[start : start + len(chunk)] = np.asarray(
                [p["probabilities"] for p in preds], dtype=np.float32
            )
            if b == 0 or (b + 1) % 5 == 0 or b + 1 == n_batches:
                log(f"queries: batch {b + 1}/{n_batches} ({len(chunk)} rows)")
    return out, sent


# ----------------------------------------------------------------------------- LiRA


def phi_of(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """z_y - logsumexp_{i != y} z_i (last axis = classes, y broadcast over leading axes)."""
    z = np.asarray(z, dtype=np.float64)
    zy = np.take_along_axis(z, np.broadcast_to(y, z.shape[:-1])[..., None], axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, np.broadcast_to(y, z.shape[:-1])[..., None], -np.inf, axis=-1)
    mx = others.max(axis=-1, keepdims=True)
    lse = mx[..., 0] + np.log(np.exp(others - mx).sum(axis=-1))
    return zy - lse


def normal_logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def normal_logcdf(x: np.ndarray) -> np.ndarray:
    return torch.special.log_ndtr(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def lira(
    phi_target: np.ndarray, phi_shadow: np.ndarray, mask: np.ndarray, variance: str
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    k, n = phi_shadow.shape
    half = k // 2
    ins = np.stack([phi_shadow[mask[:, j], j] for j in range(n)])  # (n, k/2)
    outs = np.stack([phi_shadow[~mask[:, j], j] for j in range(n)])
    assert ins.shape == (n, half) and outs.shape == (n, k - half)
    mu_in, mu_out = ins.mean(1), outs.mean(1)
    if variance == "auto":
        variance = "pooled" if k < 64 else "per-example"
    if variance == "pooled":
        sd_in = np.full(n, math.sqrt(ins.var(axis=1, ddof=1).mean()))
        sd_out = np.full(n, math.sqrt(outs.var(axis=1, ddof=1).mean()))
    elif variance == "global":
        sd_in = np.full(n, ins.std())
        sd_out = np.full(n, outs.std())
    else:
        sd_in = ins.std(axis=1, ddof=1)
        sd_out = outs.std(axis=1, ddof=1)
    floor = 1e-6
    sd_in, sd_out = np.maximum(sd_in, floor), np.maximum(sd_out, floor)
    online = normal_logpdf(phi_target, mu_in, sd_in) - normal_logpdf(phi_target, mu_out, sd_out)
    offline = normal_logcdf((phi_target - mu_out) / sd_out)
    info = {
        "variance": variance,
        "mean_sd_in": float(sd_in.mean()),
        "mean_sd_out": float(sd_out.mean()),
        "mean_gap_mu_in_minus_mu_out": float((mu_in - mu_out).mean()),
    }
    return online, offline, info


def tpr_at_fpr(truth: np.ndarray, score: np.ndarray, max_fpr: float = 0.01) -> float:
    fpr, tpr, _ = roc_curve(truth, score, drop_intermediate=False)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", default=None, help="model name on the server (default: manifest name)")
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--queries", type=int, default=16, help="N answers per pool row")
    ap.add_argument("--shadows", type=int, default=32, help="K shadow models (even)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["near-duplicate", "repeat"], default="near-duplicate")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--base-variance", type=float, default=0.3)
    ap.add_argument("--lambda-scale", type=float, default=2.0)
    ap.add_argument("--temperature", type=float, default=10.0)
    ap.add_argument("--noise-mode", choices=["fresh", "keyed"], default="fresh")
    ap.add_argument(
        "--output-mode",
        choices=["dynanoise", "calibrated_label"],
        default="dynanoise",
        help="the tenant's output mode: calibrated_label answers are simulated on the shadows "
        "from their own held-out predictions (use --temperature 1)",
    )
    ap.add_argument("--clean-shadows", action="store_true", help="do not pass shadows through the defense")
    ap.add_argument("--variance", choices=["auto", "pooled", "global", "per-example"], default="auto",
                    help="auto: pooled (global) when K < 64, else per-example")
    ap.add_argument("--shadow-cache", type=Path, default=None, help="npz to reuse trained shadows")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 or 2)")
    ap.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout, seconds")
    args = ap.parse_args(argv)

    if args.shadows < 2 or args.shadows % 2:
        ap.error("--shadows must be even and >= 2")
    if args.queries < 1 or args.max_batch < 1:
        ap.error("--queries and --max-batch must be >= 1")
    torch.set_num_threads(max(1, args.threads))
    t_start = time.perf_counter()

    manifest = json.loads(args.manifest.read_text())
    model_name = args.model or manifest["name"]
    x_all, y_all = load_dataset(manifest["trained_on"])
    n_classes = len(manifest.get("labels") or range(int(y_all.max()) + 1))
    rows, truth = evaluation_pool(manifest["split"], args.seed)
    x_pool, y_pool = x_all[rows], y_all[rows]
    n = len(rows)
    log(f"pool: {int(truth.sum())} members + {int((~truth).sum())} non-members; model {model_name!r}")

    # 3. shadows
    shadow_logits, mask = train_shadows(
        x_pool, y_pool, manifest["training"], n_classes, args.shadows, args.seed, args.shadow_cache
    )
    t_shadows = time.perf_counter() - t_start

    # 4. target queries
    rng_copies = np.random.default_rng([args.seed, 0xC0B1])
    queries = np.concatenate([make_copies(x_pool[i], args.queries, args.mode, rng_copies) for i in range(n)])
    log(f"queries: {len(queries)} rows, mode {args.mode}, max batch {args.max_batch}")
    t_q = time.perf_counter()
    probs, sent = query_server(
        args.endpoint, args.api_key, model_name, queries, args.max_batch, n_classes, args.timeout
    )
    t_query = time.perf_counter() - t_q
    probs = probs.reshape(n, args.queries, n_classes)
    distinct = np.array([len({a.tobytes() for a in probs[i]}) for i in range(n)])
    target_z = recover_logits(probs, args.temperature).mean(axis=1)  # (n, k)
    phi_target = phi_of(target_z, y_pool)
    defended_acc = float((probs.mean(axis=1).argmax(1) == y_pool).mean())

    # 5. shadows through the defense
    keyed_repeat = args.noise_mode == "keyed" and args.mode == "repeat"
    draws = 1 if keyed_repeat else args.queries
    if args.output_mode == "calibrated_label":
        sim = simulate_calibrated_label(shadow_logits, mask, y_pool)
    elif args.clean_shadows or args.base_variance == 0.0:
        # no noise: one pass through the temperature softmax + float32 rounding is all there is
        sim = (
            shadow_logits - shadow_logits.mean(-1, keepdims=True)
            if args.clean_shadows
            else recover_logits(softmax_f32(shadow_logits, args.temperature), args.temperature)
        )
    else:
        rng_noise = np.random.default_rng([args.seed, 0xD1A5])
        sim = simulate_defense(
            shadow_logits, draws, args.base_variance, args.lambda_scale, args.temperature, rng_noise
        )
    phi_shadow = phi_of(sim, y_pool[None, :])  # (K, n)

    # 6. LiRA
    online, offline, info = lira(phi_target, phi_shadow, mask, args.variance)
    result = {
        "auc_online": float(roc_auc_score(truth, online)),
        "auc_offline": float(roc_auc_score(truth, offline)),
        "tpr_at_1pct_fpr_online": tpr_at_fpr(truth, online),
        "tpr_at_1pct_fpr_offline": tpr_at_fpr(truth, offline),
        "auc_phi_threshold": float(roc_auc_score(truth, phi_target)),
        "n_members": int(truth.sum()),
        "n_non_members": int((~truth).sum()),
        "queries": args.queries,
        "mode": args.mode,
        "shadows": args.shadows,
        "requests_sent": sent,
        "rows_sent": len(queries),
        "max_batch": args.max_batch,
        "model": model_name,
        "noise_mode": args.noise_mode,
        "output_mode": args.output_mode,
        "defense": {
            "base_variance": args.base_variance,
            "lambda_scale": args.lambda_scale,
            "temperature": args.temperature,
        },
        "clean_shadows": bool(args.clean_shadows),
        "effective_draws_simulated": 0 if (args.clean_shadows or args.base_variance == 0.0) else draws,
        "distinct_answers_per_row_mean": float(distinct.mean()),
        "defended_accuracy_on_pool": defended_acc,
        "lira": info,
        "seed": args.seed,
        "seconds": {
            "shadows": round(t_shadows, 2),
            "queries": round(t_query, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

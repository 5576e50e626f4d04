"""Bounded load and soak test against a real `dynanoise serve` on loopback.

    python -m tests.load.loadtest --duration 60 --clients 64      # what `make load` runs

Starts the server (its own temporary models and SQLite database unless
--database-url is given), creates keyed tenants with different parameters, records
one answer per (tenant, input), then runs `--clients` concurrent clients spread over
`--client-processes` processes (asyncio + httpx) for `--duration` seconds, mixing v1
predict and v2 infer. Every later answer must equal the recorded one for its tenant
and input (keyed noise: a tenant's parameters and secret were honoured for that very
request), and the recorded answers differ between tenants. The server's RSS (all its
processes) is sampled throughout and compared between the first and the last window.
Exit status 0 when there were no errors, no mismatches and memory stayed flat; the
numbers go to --out as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.harness.launcher import process_tree

from ..onnx_factory import write_linear_model
from ..reliability.server import start_server

ADMIN_TOKEN = "load-admin-token-of-32-characters-or-more"
N_FEATURES, N_CLASSES = 64, 10
TENANT_PARAMS: list[dict[str, Any]] = [
    {"base_variance": 0.3, "temperature": 10.0},
    {"base_variance": 1.0, "temperature": 4.0, "lambda_scale": 1.0},
    {"base_variance": 0.5, "temperature": 2.0, "ensemble_size": 4, "sensitivity": "margin"},
    {"base_variance": 2.0, "temperature": 1.0, "sensitivity": "top1"},
    {"base_variance": 0.1, "temperature": 20.0, "ensemble_size": 2},
    {"base_variance": 0.8, "temperature": 5.0, "lambda_scale": 4.0},
]


@dataclass
class Plan:
    url: str
    keys: list[str]  # one per tenant
    inputs: list[list[float]]
    expected: list[list[list[float]]]  # [tenant][input] -> probabilities
    duration: float  # seconds each client process runs after the common start
    max_requests: int  # per client, a hard bound besides the duration


@dataclass
class ClientStats:
    requests: int = 0
    errors: int = 0
    mismatches: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class Report:
    duration_s: float
    clients: int
    client_processes: int
    server_workers: int
    tenants: int
    requests: int
    errors: int
    mismatches: int
    requests_per_second: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    rss_first_window_mb: float
    rss_last_window_mb: float
    rss_growth_mb: float
    rss_window_s: float
    answers_differ_between_tenants: bool
    server_exit_code: int | None
    error_samples: list[str]
    ok: bool
    problems: list[str]


def _v1(row: list[float]) -> dict[str, Any]:
    return {"instances": [row]}


def _v2(row: list[float]) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": [1, N_FEATURES], "datatype": "FP32", "data": row}]
    }


def _probabilities(path: str, payload: dict[str, Any]) -> list[float]:
    if path.endswith("/predict"):
        probabilities: list[float] = payload["predictions"][0]["probabilities"]
        return probabilities
    data: list[float] = payload["outputs"][0]["data"]
    return data


async def _client(
    plan: Plan, deadline: float, seed: int, stats: ClientStats, http: httpx.AsyncClient
) -> None:
    rng = random.Random(seed)
    for _ in range(plan.max_requests):
        if time.monotonic() >= deadline:
            return
        tenant = rng.randrange(len(plan.keys))
        index = rng.randrange(len(plan.inputs))
        path, body = (
            ("/v1/models/digits/predict", _v1(plan.inputs[index]))
            if rng.random() < 0.5
            else ("/v2/models/digits/infer", _v2(plan.inputs[index]))
        )
        started = time.perf_counter()
        try:
            response = await http.post(
                path, json=body, headers={"Authorization": f"Bearer {plan.keys[tenant]}"}
            )
        except httpx.HTTPError as exc:
            stats.requests += 1
            stats.errors += 1
            if len(stats.error_samples) < 5:
                stats.error_samples.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        stats.requests += 1
        if response.status_code != 200:
            stats.errors += 1
            if len(stats.error_samples) < 5:
                stats.error_samples.append(f"{path}: {response.status_code} {response.text[:200]}")
            continue
        if _probabilities(path, response.json()) != plan.expected[tenant][index]:
            stats.mismatches += 1


async def _client_process_main(plan: Plan, clients: int, first_seed: int) -> ClientStats:
    stats = ClientStats()
    deadline = time.monotonic() + plan.duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=plan.url, timeout=60, limits=limits) as http:
        await asyncio.gather(
            *(_client(plan, deadline, first_seed + i, stats, http) for i in range(clients))
        )
    return stats


def _run_client_process(
    plan: Plan, clients: int, first_seed: int, ready: Any, go: Any, out: Any
) -> None:
    ready.put(first_seed)  # imported and ready: the clock starts when all are
    if go.wait(timeout=300):
        out.put(asdict(asyncio.run(_client_process_main(plan, clients, first_seed))))


def _server_rss_mb(pid: int) -> float:
    total = 0
    for process in process_tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue  # it ended meanwhile
    return total / 2**20


def _sample_rss(pid: int, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    while not stop.wait(0.25):
        samples.append((time.monotonic(), _server_rss_mb(pid)))


def _setup(url: str, tenants: int, n_inputs: int) -> tuple[list[str], list[list[float]], list]:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    keys = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(tenants):
            params = {**TENANT_PARAMS[i % len(TENANT_PARAMS)], "noise_mode": "keyed"}
            response = http.post(
                "/admin/tenants", json={"name": f"load-{i}", **params}, headers=admin
            )
            response.raise_for_status()
            keys.append(response.json()["api_key"])
        rng = np.random.default_rng(0)
        inputs = [
            [float(v) for v in rng.normal(size=N_FEATURES).astype(np.float32)]
            for _ in range(n_inputs)
        ]
        expected = [
            [
                http.post(
                    "/v1/models/digits/predict",
                    json=_v1(row),
                    headers={"Authorization": f"Bearer {key}"},
                ).json()["predictions"][0]["probabilities"]
                for row in inputs
            ]
            for key in keys
        ]
    return keys, inputs, expected


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load(
    *,
    duration: float,
    clients: int,
    client_processes: int,
    tenants: int,
    workers: int,
    n_inputs: int = 16,
    database_url: str | None = None,
    workdir: Path | None = None,
    rss_window: float | None = None,
    max_rss_growth_mb: float = 25.0,
    max_requests_per_client: int = 1_000_000,
) -> Report:
    """Run one bounded load test; returns the report (``ok`` says whether it passed)."""
    if not 1 <= client_processes <= clients:
        raise ValueError("need 1 <= client_processes <= clients")
    with tempfile.TemporaryDirectory(prefix="dynanoise-load-") as scratch:
        base = workdir or Path(scratch)
        models = base / "models"
        write_linear_model(
            models, name="digits", n_features=N_FEATURES, n_classes=N_CLASSES, seed=7
        )
        server = start_server(
            base,
            models_dir=models,
            database_url=database_url or f"sqlite:///{base / 'tenants.db'}",
            admin_token=ADMIN_TOKEN,
            workers=workers,
            extra_env={"DYNANOISE_TENANT_CACHE_SECONDS": "1.0", "DYNANOISE_LOG_LEVEL": "warning"},
        )
        try:
            keys, inputs, expected = _setup(server.url, tenants, n_inputs)
            differ = all(
                expected[a][i] != expected[b][i]
                for i in range(n_inputs)
                for a in range(tenants)
                for b in range(a + 1, tenants)
            )
            samples: list[tuple[float, float]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample_rss, args=(server.process.pid, stop, samples))
            context = multiprocessing.get_context("spawn")
            ready, go, results = context.Queue(), context.Event(), context.Queue()
            plan = Plan(server.url, keys, inputs, expected, duration, max_requests_per_client)
            per_process = [clients // client_processes] * client_processes
            for i in range(clients % client_processes):
                per_process[i] += 1
            processes = [
                context.Process(
                    target=_run_client_process,
                    args=(plan, n, 1000 * p, ready, go, results),
                    daemon=True,
                )
                for p, n in enumerate(per_process)
            ]
            for process in processes:
                process.start()
            for _ in processes:
                ready.get(timeout=300)
            started = time.monotonic()
            sampler.start()
            go.set()
            gathered = [results.get(timeout=duration + 120) for _ in processes]
            for process in processes:
                process.join(timeout=30)
            elapsed = time.monotonic() - started
            stop.set()
            sampler.join()
        finally:
            exit_code = server.stop()
    stats = ClientStats()
    for item in gathered:
        stats.requests += item["requests"]
        stats.errors += item["errors"]
        stats.mismatches += item["mismatches"]
        stats.error_samples += item["error_samples"]
        stats.latencies_ms += item["latencies_ms"]
    window = rss_window if rss_window is not None else min(10.0, duration / 4)
    first = [rss for t, rss in samples if t - started <= window]
    last = [rss for t, rss in samples if t - started >= elapsed - window]
    rss_first = statistics.fmean(first) if first else float("nan")
    rss_last = statistics.fmean(last) if last else float("nan")
    problems = []
    if stats.requests == 0:
        problems.append("no requests were made")
    if stats.errors:
        problems.append(f"{stats.errors} errors")
    if stats.mismatches:
        problems.append(f"{stats.mismatches} answers differ from the tenant's recorded answer")
    if not differ:
        problems.append("two tenants gave the same answer to one input")
    if not rss_last - rss_first <= max_rss_growth_mb:
        problems.append(f"server RSS grew {rss_last - rss_first:.1f} MB (> {max_rss_growth_mb} MB)")
    if exit_code != 0:
        problems.append(f"server exited with {exit_code} after SIGTERM")
    return Report(
        duration_s=round(elapsed, 2),
        clients=clients,
        client_processes=client_processes,
        server_workers=workers,
        tenants=tenants,
        requests=stats.requests,
        errors=stats.errors,
        mismatches=stats.mismatches,
        requests_per_second=round(stats.requests / elapsed, 1),
        latency_ms_p50=round(_percentile(stats.latencies_ms, 0.50), 2),
        latency_ms_p95=round(_percentile(stats.latencies_ms, 0.95), 2),
        latency_ms_p99=round(_percentile(stats.latencies_ms, 0.99), 2),
        rss_first_window_mb=round(rss_first, 1),
        rss_last_window_mb=round(rss_last, 1),
        rss_growth_mb=round(rss_last - rss_first, 1),
        rss_window_s=window,
        answers_differ_between_tenants=differ,
        server_exit_code=exit_code,
        error_samples=stats.error_samples,
        ok=not problems,
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--database-url", help="tenant store (default: a temporary SQLite file)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=25.0)
    parser.add_argument("--out", type=Path, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    report = run_load(
        duration=args.duration,
        clients=args.clients,
        client_processes=args.client_processes,
        tenants=args.tenants,
        workers=args.workers,
        database_url=args.database_url,
        max_rss_growth_mb=args.max_rss_growth_mb,
    )
    text = json.dumps(asdict(report), indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

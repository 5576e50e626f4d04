"""Runs the benchmark sections a BenchConfig names and returns the results as data.

Sections: defense (micro-benchmark), service (v1/v2 x defense on/off x concurrency),
binary (v2 binary tensors vs JSON), batching (adaptive micro-batching on vs off),
peers (KServe, MLServer, LitServe, BentoML, a naive FastAPI app, and the framework
floor: a bare ASGI app), memory (RSS and install size).
Variants compared with each other are measured in the same rounds, interleaved.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from service.defense import _compiled

from .cnn import CNN_FEATURES, CNN_NAME, write_cnn_model
from .comparison import FLOOR, NOT_BUILT, SERVICE, compare, installed_version, python_for
from .config import BenchConfig
from .defense import PAPER_MS_PER_SAMPLE, bench_defense
from .histograms import Sums, defense_share, scrape_sums, total_requests
from .launcher import ServerProcess
from .load import LoadResult, run_wrk
from .memory import serving_install_size
from .models import prepare_models
from .overload import overload_section
from .payloads import Payload, sample_rows, v1_json, v2_binary, v2_json
from .report import summarize, write_report
from .servers import PEERS, Peer, ServerError, peer_server, service_server
from .stats import ratios, spread

Log = Callable[[str], None]
Measure = Callable[[], LoadResult]


def run_bench(config: BenchConfig, log: Log = print) -> dict[str, Any]:
    """Run the configured sections; write results.json and README.md under out_dir."""
    started = time.monotonic()
    with _work_dir(config) as work:
        models_dir, model = prepare_models(
            config.models_dir,
            work,
            model=config.model,
            extra_features=config.binary_features if "binary" in config.sections else (),
        )
        manifest = json.loads(
            (models_dir / _model_dir_name(models_dir, model) / "manifest.json").read_text()
        )
        features = int(manifest["input"]["shape"][1])
        results: dict[str, Any] = {"meta": _meta(config, model, manifest)}
        if "defense" in config.sections:
            log("defense micro-benchmark")
            results["defense"] = bench_defense(
                models_dir / _model_dir_name(models_dir, model),
                batch_sizes=config.batch_sizes,
                class_counts=config.class_counts,
                repeats=config.defense_repeats,
                target_s=config.defense_target_s,
            )
        load_sections = {"service", "binary", "batching", "peers", "memory"}
        if load_sections & set(config.sections):
            with ExitStack() as stack:
                server = stack.enter_context(service_server(models_dir, work))
                if "service" in config.sections:
                    log("service throughput and latency")
                    before = _histogram_sums(server)
                    cpu_before = server.cpu_seconds()
                    results["service"] = _service(config, server, model, features, log)
                    cpu_s = server.cpu_seconds() - cpu_before
                    results["defense_share"] = _defense_shares(
                        server, before, config.tenants, cpu_s
                    )
                if "binary" in config.sections:
                    log("v2 binary tensors vs JSON")
                    results["binary"] = _binary(config, server, log)
                if "memory" in config.sections:
                    _warm_up(server, model, features)
                    results["memory"] = {
                        "service_worker_rss_mb": server.rss_mb(),
                        "serving_install": serving_install_size(),
                    }
                if "batching" in config.sections:
                    log("adaptive micro-batching on vs off")
                    pair = [
                        stack.enter_context(
                            service_server(
                                models_dir, work, batching_max_delay_ms=delay, tag=f"batching-{tag}"
                            )
                        )
                        for tag, delay in (("off", 0.0), ("on", config.batching_max_delay_ms))
                    ]
                    off, on = pair
                    results["batching"] = _batching(config, off, on, model, features, log)
                if "peers" in config.sections:
                    log("peers and the framework floor")
                    results["peers"] = _peers(
                        config, stack, server, models_dir / _model_dir_name(models_dir, model),
                        work, model, features, log,
                    )  # fmt: skip
        if "overload" in config.sections:
            log("overload: admission off, at its defaults, and bounded")
            results["overload"] = overload_section(config, models_dir, work, model, features, log)
        results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
        results["summary"] = summarize(results)
        write_report(results, config)
    return results


@contextmanager
def _work_dir(config: BenchConfig) -> Iterator[Path]:
    if config.work_dir is not None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        yield config.work_dir
        return
    path = Path(tempfile.mkdtemp(prefix="dynanoise-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _model_dir_name(models_dir: Path, model: str) -> str:
    for manifest in models_dir.glob("*/manifest.json"):
        if json.loads(manifest.read_text())["name"] == model:
            return manifest.parent.name
    raise FileNotFoundError(f"model {model!r} not in {models_dir}")


def _meta(config: BenchConfig, model: str, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "command": config.command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        # Which code the defense ran: the C extensions, or the Python that replaces them.
        "compiled": {"kernel": _compiled.kernel is not None, "keyed": _compiled.keyed is not None},
        "model": {
            "name": model,
            "input_shape": manifest["input"]["shape"],
            "classes": len(manifest["labels"]),
            "description": manifest.get("description", ""),
        },
        "paper_ms_per_sample": PAPER_MS_PER_SAMPLE,
        "sections": list(config.sections),
        "load_seconds": config.load_seconds,
        "warmup_seconds": config.warmup_seconds,
        "load_repeats": config.load_repeats,
        "off_means": "tenant with base_variance 0 and temperature 1: the same defense code "
        "path without noise or smoothing (the service never returns clean probabilities)",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _interleave(measures: dict[str, Measure], repeats: int) -> dict[str, list[LoadResult]]:
    """Each variant once per round, rounds repeated: variants share the machine's mood.

    Odd rounds run the variants in reverse order, so a machine that speeds up or slows
    down during a round (caches, CPU frequency, neighbours) favours none of them.
    """
    runs: dict[str, list[LoadResult]] = {name: [] for name in measures}
    names = list(measures)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            runs[name].append(measures[name]())
    return runs


def _load_summary(runs: list[LoadResult]) -> dict[str, Any]:
    return {
        "throughput_rps": spread([r.throughput for r in runs]),
        "p50_ms": spread([r.p50_ms for r in runs]),
        "p99_ms": spread([r.p99_ms for r in runs]),
        "errors": sum(r.errors for r in runs),
        "requests": sum(r.requests for r in runs),
    }


def _wrk(
    config: BenchConfig, url: str, payload: Payload, concurrency: int, key: str | None
) -> Measure:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return lambda: run_wrk(
        url,
        payload,
        concurrency=concurrency,
        duration_s=config.load_seconds,
        extra_headers=headers,
        warmup_s=config.warmup_seconds,
    )


def _service(
    config: BenchConfig, server: ServerProcess, model: str, features: int, log: Log
) -> list[dict[str, Any]]:
    rows = sample_rows(1, features)
    endpoints = {
        "v1": (f"{server.url}/v1/models/{model}/predict", v1_json(rows)),
        "v2": (f"{server.url}/v2/models/{model}/infer", v2_json(rows)),
    }
    out = []
    for concurrency in config.concurrencies:
        measures = {
            f"{endpoint}/{tenant}": _wrk(config, url, payload, concurrency, server.keys[tenant])
            for endpoint, (url, payload) in endpoints.items()
            for tenant in config.tenants
        }
        runs = _interleave(measures, config.load_repeats)
        for name, results in runs.items():
            endpoint, tenant = name.split("/")
            out.append({"endpoint": endpoint, "defense": tenant, "concurrency": concurrency,
                        **_load_summary(results)})  # fmt: skip
        for endpoint in endpoints:
            if "on" in config.tenants and "off" in config.tenants:
                ratio = ratios(
                    [r.throughput for r in runs[f"{endpoint}/on"]],
                    [r.throughput for r in runs[f"{endpoint}/off"]],
                )
                out.append({"endpoint": endpoint, "defense": "on/off", "concurrency": concurrency,
                            "throughput_ratio": ratio})  # fmt: skip
        log(f"  concurrency {concurrency}: done")
    return out


def _histogram_sums(server: ServerProcess) -> Sums:
    return scrape_sums(f"http://127.0.0.1:{server.metrics_port}/metrics")


def _defense_shares(
    server: ServerProcess, before: Sums, tenants: tuple[str, ...], cpu_s: float
) -> dict[str, Any]:
    """Each tenant's defense seconds over its request seconds, from the server's own
    histograms over the whole service section, and over the server's CPU seconds per
    request in it (``cpu_s``: its process tree's; see histograms.py)."""
    delta = _histogram_sums(server).minus(before)
    requests = total_requests(delta)
    cpu_us = 1e6 * cpu_s / requests if requests > 0 and cpu_s > 0 else None
    return {tenant: defense_share(delta, tenant, cpu_us) for tenant in tenants}


def _binary(config: BenchConfig, server: ServerProcess, log: Log) -> list[dict[str, Any]]:
    out = []
    key = server.keys["on"]
    for features in config.binary_features:
        url = f"{server.url}/v2/models/image{features}/infer"
        for n in config.binary_rows:
            rows = sample_rows(n, features)
            payloads = {"json": v2_json(rows), "binary": v2_binary(rows)}
            measures = {
                name: _wrk(config, url, payload, config.binary_concurrency, key)
                for name, payload in payloads.items()
            }
            runs = _interleave(measures, config.load_repeats)
            for name, results in runs.items():
                out.append({"features": features, "rows": n, "encoding": name,
                            "request_bytes": len(payloads[name].body),
                            "concurrency": config.binary_concurrency,
                            **_load_summary(results)})  # fmt: skip
            out.append({"features": features, "rows": n, "encoding": "binary/json",
                        "throughput_ratio": ratios([r.throughput for r in runs["binary"]],
                                                   [r.throughput for r in runs["json"]])})  # fmt: skip
            log(f"  {features} features x {n} rows: done")
    return out


def _batching(
    config: BenchConfig,
    plain: ServerProcess,
    batching: ServerProcess,
    model: str,
    features: int,
    log: Log,
) -> list[dict[str, Any]]:
    """Micro-batching on vs off, one row per request, at each concurrency: on the served
    model (``plain`` / ``batching``), then on the generated CNN (``cnn.py``, one 3072-float
    row) under a pair of servers of its own; each pair in the same interleaved rounds."""
    out: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="dynanoise-bench-cnn-") as scratch,
        ExitStack() as stack,
    ):
        cnn_models = Path(scratch) / "models"
        write_cnn_model(cnn_models)
        servers = {
            model: (plain, batching, v1_json(sample_rows(1, features))),
            CNN_NAME: (
                stack.enter_context(
                    service_server(cnn_models, Path(scratch), batching_max_delay_ms=0.0, tag="cnn")
                ),
                stack.enter_context(
                    service_server(
                        cnn_models,
                        Path(scratch),
                        batching_max_delay_ms=config.batching_max_delay_ms,
                        tag="cnn-batching",
                    )
                ),
                v1_json(sample_rows(1, CNN_FEATURES)),
            ),
        }
        for served, (off, on, payload) in servers.items():
            for concurrency in config.batching_concurrencies:
                measures = {
                    name: _wrk(config, f"{s.url}/v1/models/{served}/predict", payload,
                               concurrency, s.keys["on"])
                    for name, s in (("off", off), ("on", on))
                }  # fmt: skip
                runs = _interleave(measures, config.load_repeats)
                for name, results in runs.items():
                    out.append({"model": served, "batching": name, "concurrency": concurrency,
                                "max_delay_ms": config.batching_max_delay_ms if name == "on" else 0.0,
                                **_load_summary(results)})  # fmt: skip
                out.append({"model": served, "batching": "on/off", "concurrency": concurrency,
                            "throughput_ratio": ratios([r.throughput for r in runs["on"]],
                                                       [r.throughput for r in runs["off"]])})  # fmt: skip
                log(f"  {served}, concurrency {concurrency}: done")
    return out


def _peers(
    config: BenchConfig,
    stack: ExitStack,
    server: ServerProcess,
    model_dir: Path,
    work: Path,
    model: str,
    features: int,
    log: Log,
) -> dict[str, Any]:
    """The service (v1, defense on) against every peer that starts and answers, and the
    framework floor, in the same interleaved rounds. A peer without its venv, or that
    fails to start or to answer, is reported as not measured; the run goes on."""
    service_url = f"{server.url}/v1/models/{model}/predict"
    input_name = json.loads((model_dir / "manifest.json").read_text())["input"]["name"]

    def bodies(rows: int) -> dict[str, Payload]:
        sample = sample_rows(rows, features)
        return {"v1": v1_json(sample), "v2": v2_json(sample, input_name)}

    answer = _answer(service_url, bodies(1)["v1"], server.keys["on"])
    out: dict[str, Any] = {"servers": {}, "runs": [], "ratios": [], "rss_mb": {}}
    started: dict[str, tuple[Peer, ServerProcess, str]] = {}  # name: (peer, server, url)
    for peer in PEERS:
        override = config.bentoml_python if peer.name == "bentoml" else None
        python = python_for(peer, config.venvs_dir, override)
        entry: dict[str, Any] = {"status": NOT_BUILT, "version": None, "protocol": peer.protocol,
                                 "description": peer.description}  # fmt: skip
        out["servers"][peer.name] = entry
        if peer.venv is not None and python is None:
            log(f"  {peer.name}: {NOT_BUILT}")
            continue
        entry["version"] = installed_version(
            python or Path(sys.executable), _DISTRIBUTIONS.get(peer.name, peer.name)
        )
        try:
            target = stack.enter_context(peer_server(
                peer, python=python, model_dir=model_dir, model=model, work_dir=work,
                floor_answer=answer,
            ))  # fmt: skip
        except ServerError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
            why = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
            entry["status"] = f"not measured (did not start: {why})"
            log(f"  {peer.name}: {entry['status']}")
            continue
        url = target.url + peer.path.format(model=model)
        problem = _probe(url, bodies(1)[peer.protocol])
        entry["status"] = "measured" if problem is None else f"not measured ({problem})"
        if problem is None:
            started[peer.name] = (peer, target, url)
        else:
            log(f"  {peer.name}: {entry['status']}")
    for n in config.peer_rows:
        payloads = bodies(n)
        for concurrency in config.peer_concurrencies if n == 1 else [config.comparison_concurrency]:
            measures = {SERVICE: _wrk(config, service_url, payloads["v1"], concurrency,
                                      server.keys["on"])}  # fmt: skip
            for name, (peer, _, url) in started.items():
                if n == 1 or name != FLOOR:  # the floor's fixed answer is one row's
                    measures[name] = _wrk(config, url, payloads[peer.protocol], concurrency, None)
            runs = _interleave(measures, config.load_repeats)
            for name, results in runs.items():
                out["runs"].append({"server": name, "rows": n, "concurrency": concurrency,
                                    **_load_summary(results)})  # fmt: skip
            out["ratios"].append({"rows": n, "concurrency": concurrency, **compare(runs)})
            log(f"  {n} row(s), concurrency {concurrency}: done")
    out["rss_mb"] = {name: target.rss_mb() for name, (_, target, _) in started.items()}
    out["rss_mb"][SERVICE] = server.rss_mb()
    return out


_DISTRIBUTIONS = {"naive": "fastapi", "floor": "uvicorn"}  # what a peer's version is of


def _answer(url: str, payload: Payload, key: str) -> bytes:
    """The service's answer to ``payload``: the floor answers it, byte for byte."""
    headers = {**payload.headers, "Authorization": f"Bearer {key}"}
    response = httpx.post(url, content=payload.body, headers=headers, timeout=30.0)
    response.raise_for_status()
    return response.content


def _probe(url: str, payload: Payload) -> str | None:
    """Why a peer cannot be measured (it does not answer ``payload`` with 200), or None."""
    try:
        response = httpx.post(url, content=payload.body, headers=payload.headers, timeout=30.0)
    except httpx.HTTPError as exc:
        return f"no answer: {exc}"
    if response.status_code != 200:
        return f"answered {response.status_code}: {response.text[:200]}"
    return None


def _warm_up(server: ServerProcess, model: str, features: int) -> None:
    run_wrk(
        f"{server.url}/v1/models/{model}/predict",
        v1_json(sample_rows(1, features)),
        concurrency=4,
        duration_s=1,
        extra_headers={"Authorization": f"Bearer {server.keys['on']}"},
    )

"""Runs the benchmark sections a BenchConfig names and returns the results as data.

Sections: defense (micro-benchmark), service (v1/v2 x defense on/off x concurrency),
binary (v2 binary tensors vs JSON), batching (adaptive micro-batching on vs off),
baselines (the naive FastAPI app and BentoML), memory (RSS and install size).
Variants compared with each other are measured in the same rounds, interleaved.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from service.defense import _compiled

from .config import BenchConfig
from .defense import PAPER_MS_PER_SAMPLE, bench_defense
from .launcher import ServerProcess
from .load import LoadResult, run_wrk
from .memory import serving_install_size
from .models import prepare_models
from .payloads import Payload, sample_rows, v1_json, v2_binary, v2_json
from .report import summarize, write_report
from .servers import bentoml_server, naive_server, service_server
from .stats import ratios, spread

BENCH_DIR = Path(__file__).resolve().parents[1]  # bench/: results, and `make bench-venv`'s .venv
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
        load_sections = {"service", "binary", "batching", "baselines", "memory"}
        if load_sections & set(config.sections):
            with ExitStack() as stack:
                server = stack.enter_context(service_server(models_dir, work))
                if "service" in config.sections:
                    log("service throughput and latency")
                    results["service"] = _service(config, server, model, features, log)
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
                    batching = stack.enter_context(
                        service_server(
                            models_dir,
                            work,
                            batching_max_delay_ms=config.batching_max_delay_ms,
                            tag="service-batching",
                        )
                    )
                    results["batching"] = _batching(config, server, batching, model, features, log)
                if "baselines" in config.sections:
                    log("baselines: naive FastAPI app and BentoML")
                    results["baselines"] = _baselines(
                        config, stack, server, models_dir / _model_dir_name(models_dir, model),
                        work, model, features, results, log,
                    )  # fmt: skip
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
        url, payload, concurrency=concurrency, duration_s=config.load_seconds, extra_headers=headers
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
    payload = v1_json(sample_rows(1, features))
    out = []
    for concurrency in config.batching_concurrencies:
        measures = {
            name: _wrk(
                config, f"{s.url}/v1/models/{model}/predict", payload, concurrency, s.keys["on"]
            )
            for name, s in (("off", plain), ("on", batching))
        }
        runs = _interleave(measures, config.load_repeats)
        for name, results in runs.items():
            out.append({"batching": name, "concurrency": concurrency,
                        "max_delay_ms": config.batching_max_delay_ms if name == "on" else 0.0,
                        **_load_summary(results)})  # fmt: skip
        out.append({"batching": "on/off", "concurrency": concurrency,
                    "throughput_ratio": ratios([r.throughput for r in runs["on"]],
                                               [r.throughput for r in runs["off"]])})  # fmt: skip
        log(f"  concurrency {concurrency}: done")
    return out


def _bentoml_python(config: BenchConfig) -> Path | None:
    candidates = [config.bentoml_python] if config.bentoml_python else []
    candidates += [BENCH_DIR / ".venv/bin/python", Path("/tmp/bench-venv/bin/python")]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            return candidate.absolute()
    return None


def _baselines(
    config: BenchConfig,
    stack: ExitStack,
    server: ServerProcess,
    model_dir: Path,
    work: Path,
    model: str,
    features: int,
    results: dict[str, Any],
    log: Log,
) -> dict[str, Any]:
    targets: dict[str, ServerProcess] = {
        "naive": stack.enter_context(naive_server(model_dir, work))
    }
    python = _bentoml_python(config)
    note = None
    if python is None:
        note = "BentoML not measured: no benchmark venv (make bench-venv, or --bentoml-python)"
        log("  " + note)
    else:
        targets["bentoml"] = stack.enter_context(bentoml_server(python, model_dir, work))
    out: dict[str, Any] = {"runs": [], "note": note, "rss_mb": {}}
    if python is not None:
        results["meta"]["bentoml_version"] = _bentoml_version(python)
    concurrencies = sorted({config.comparison_concurrency, *config.concurrencies})
    for n in config.baseline_rows:
        payload = v1_json(sample_rows(n, features))
        for concurrency in concurrencies if n == 1 else [config.comparison_concurrency]:
            measures = {"service": _wrk(config, f"{server.url}/v1/models/{model}/predict",
                                        payload, concurrency, server.keys["on"])}  # fmt: skip
            for name, target in targets.items():
                measures[name] = _wrk(config, f"{target.url}/predict", payload, concurrency, None)
            runs = _interleave(measures, config.load_repeats)
            for name, results_ in runs.items():
                out["runs"].append({"server": name, "rows": n, "concurrency": concurrency,
                                    **_load_summary(results_)})  # fmt: skip
            for name in targets:
                out["runs"].append({"server": f"service/{name}", "rows": n, "concurrency": concurrency,
                                    "throughput_ratio": ratios([r.throughput for r in runs["service"]],
                                                               [r.throughput for r in runs[name]])})  # fmt: skip
            log(f"  {n} row(s), concurrency {concurrency}: done")
    for name, target in targets.items():
        out["rss_mb"][name] = target.rss_mb()
    out["rss_mb"]["service"] = server.rss_mb()
    return out


def _bentoml_version(python: Path) -> str | None:
    completed = subprocess.run(
        [str(python), "-c", "import bentoml; print(bentoml.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return completed.stdout.strip() or None


def _warm_up(server: ServerProcess, model: str, features: int) -> None:
    run_wrk(
        f"{server.url}/v1/models/{model}/predict",
        v1_json(sample_rows(1, features)),
        concurrency=4,
        duration_s=1,
        extra_headers={"Authorization": f"Bearer {server.keys['on']}"},
    )

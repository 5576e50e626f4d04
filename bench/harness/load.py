"""Load generation with ``wrk`` (closed loop, fixed concurrency, bounded in time).

Python clients (httpx, aiohttp) saturate near 600-900 requests/s on this kind of
machine, below what the servers answer, so the load comes from wrk, driven by a
Lua script that POSTs a fixed body and prints its own summary as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .payloads import Payload

_LUA = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("DYNANOISE_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
for line in io.lines(os.getenv("DYNANOISE_BENCH_HEADERS")) do
  local name, value = line:match("^([^:]+): (.*)$")
  if name then wrk.headers[name] = value end
end

-- 503s are counted only when asked: a response() hook makes wrk parse every answer.
local threads = {}
setup = function(thread) table.insert(threads, thread) end
if os.getenv("DYNANOISE_BENCH_COUNT_503") == "1" then
  status_503 = 0
  response = function(status, headers, body)
    if status == 503 then status_503 = status_503 + 1 end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local shed = 0
  for _, thread in ipairs(threads) do shed = shed + (thread:get("status_503") or 0) end
  io.write(string.format(
    '\\nBENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors_status": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, ' ..
    '"errors_timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"max_us": %d, "status_503": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, shed))
end
"""


class LoadError(RuntimeError):
    """wrk is missing, failed, or the server answered errors."""


@dataclass(frozen=True)
class LoadResult:
    """One timed run at fixed concurrency."""

    concurrency: int
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    status_503: int = 0
    """Answers with status 503 (within ``errors``); counted with ``count_503`` only."""

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return max(self.requests - self.errors, 0) / self.duration_s if self.duration_s else 0.0


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadError("wrk not found: install it (Debian: apt-get install -y wrk)")
    return path


def run_wrk(
    url: str,
    payload: Payload,
    *,
    concurrency: int,
    duration_s: float,
    extra_headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    count_503: bool = False,
    warmup_s: float = 0.0,
) -> LoadResult:
    """POST ``payload`` to ``url`` from ``concurrency`` connections for ``duration_s``;
    ``count_503``: also count the 503 answers (a little more work for wrk per answer).
    ``warmup_s`` > 0: the same load for that long first (whole seconds, at least one),
    not counted. After a few seconds idle this machine runs a server's first requests
    20-50x slower than warm ones (a 0.3 ms request took 9-12 ms, in process too): a
    state of the machine, not of the server, that would otherwise set the p99 of a
    short run of whichever server ran after an idle spell."""
    headers = {**payload.headers, **(extra_headers or {})}
    with tempfile.TemporaryDirectory(prefix="dynanoise-wrk-") as tmp:
        work = Path(tmp)
        (work / "body").write_bytes(payload.body)
        (work / "headers").write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
        (work / "post.lua").write_text(_LUA)

        def command(seconds: float) -> list[str]:
            return [
                wrk_path(),
                "-t1",
                f"-c{concurrency}",
                f"-d{max(seconds, 1.0):.0f}s",
                f"--timeout={timeout_s:.0f}s",
                "-s",
                str(work / "post.lua"),
                url,
            ]

        env = {
            "DYNANOISE_BENCH_BODY": str(work / "body"),
            "DYNANOISE_BENCH_HEADERS": str(work / "headers"),
            "PATH": "/usr/bin:/bin",
        }
        if count_503:
            env["DYNANOISE_BENCH_COUNT_503"] = "1"
        if warmup_s > 0:
            subprocess.run(
                command(warmup_s),
                env=env,
                capture_output=True,
                timeout=warmup_s + timeout_s + 30,
                check=False,
            )
        completed = subprocess.run(
            command(duration_s),
            env=env,
            capture_output=True,
            text=True,
            timeout=duration_s + timeout_s + 30,
            check=False,
        )
    return parse_wrk_output(completed.stdout, completed.stderr, concurrency)


def parse_wrk_output(stdout: str, stderr: str, concurrency: int) -> LoadResult:
    """The summary our Lua ``done`` hook printed, as a LoadResult."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            errors = sum(int(data[k]) for k in data if k.startswith("errors_"))
            return LoadResult(
                concurrency=concurrency,
                requests=int(data["requests"]),
                duration_s=int(data["duration_us"]) / 1e6,
                errors=errors,
                p50_ms=int(data["p50_us"]) / 1000.0,
                p90_ms=int(data["p90_us"]) / 1000.0,
                p99_ms=int(data["p99_us"]) / 1000.0,
                status_503=int(data.get("status_503", 0)),
            )
    raise LoadError(f"wrk printed no summary:\n{stdout[-2000:]}\n{stderr[-2000:]}")

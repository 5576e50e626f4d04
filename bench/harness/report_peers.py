"""The peers section rendered: markdown tables (servers, runs by concurrency, the
service's ratios to the best peer and to the floor) and a PNG (throughput and p99 by
concurrency, one line per server). Reads ``results["peers"]`` (runner._peers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .comparison import FLOOR, SERVICE
from .stats import fmt

PLOT = "peers.png"


def peers_markdown(data: dict[str, Any] | None, summary: dict[str, Any]) -> list[str]:
    if not data:
        return []
    lines = [
        "",
        "## (c) Against the peers a user would pick, and the framework floor",
        "",
        "The same model file, one worker each, in the same interleaved rounds; the service "
        "runs the defense (paper setting, v1), the peers run none. Each peer is tuned as a "
        "user easily would (access logs off, no gzip, no metrics middleware where it can be "
        "turned off) and asked in its own protocol; its venv is under bench/.venvs/ "
        "(`make bench-venvs`). The best peer at a concurrency: the highest median "
        "throughput there, the floor excluded.",
        "",
        "| server | version | protocol | status | what |",
        "|---|---|---|---|---|",
    ]
    for name, server in data["servers"].items():
        lines.append(f"| {name} | {server['version'] or '-'} | {server['protocol']} | "
                     f"{server['status']} | {server['description']} |")  # fmt: skip
    for rows in sorted({row["rows"] for row in data["runs"]}):
        lines += _runs_table(data, rows)
    lines += _ratio_table(data)
    best = summary.get("best_peer")
    if best is not None:
        lines += ["", f"Smallest service / best peer: {summary['throughput_ratio_vs_best_peer']:.3g}"
                  f" ({best}, concurrency {summary['best_peer_concurrency']})."]  # fmt: skip
    return lines


def _runs_table(data: dict[str, Any], rows: int) -> list[str]:
    runs = [row for row in data["runs"] if row["rows"] == rows]
    concurrencies = sorted({row["concurrency"] for row in runs})
    servers = list(dict.fromkeys(row["server"] for row in runs))
    lines = ["", f"{rows} row(s) per request: requests/s, p50 ms, p99 ms (errors, if any)", "",
             "| server | " + " | ".join(f"c{c}" for c in concurrencies) + " |",
             "|---" * (len(concurrencies) + 1) + "|"]  # fmt: skip
    for server in servers:
        cells = []
        for c in concurrencies:
            row = next((r for r in runs if r["server"] == server and r["concurrency"] == c), None)
            if row is None:
                cells.append("")
                continue
            errors = f", {row['errors']} errors" if row["errors"] else ""
            cells.append(f"{row['throughput_rps']['median']:.0f} req/s, "
                         f"p50 {row['p50_ms']['median']:.2f}, p99 {row['p99_ms']['median']:.2f}"
                         f"{errors}")  # fmt: skip
        lines.append(f"| {server} | " + " | ".join(cells) + " |")
    return lines


def _ratio_table(data: dict[str, Any]) -> list[str]:
    lines = ["", "Service throughput / each server's, pairs from the same round, median "
             "(min-max); target: / best peer >= 2 at every concurrency, / floor >= 0.4 at c8:", "",
             "| rows | concurrency | best peer | service / best peer | service / floor | "
             "service / each peer |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in data["ratios"]:
        ratios = row["throughput_ratio"]
        best = row["best_peer"]
        each = ", ".join(
            f"{name} {ratio['median']:.2f}" for name, ratio in ratios.items() if name != FLOOR
        )
        lines.append(
            f"| {row['rows']} | {row['concurrency']} | {best or '-'} | "
            f"{fmt(ratios[best]) if best else '-'} | "
            f"{fmt(ratios[FLOOR], 3) if FLOOR in ratios else '-'} | {each} |"
        )
    return lines


def peers_plot(data: dict[str, Any] | None, out: Path) -> str | None:
    """Throughput and p99 by concurrency (one row per request), one line per server."""
    runs = [row for row in (data or {}).get("runs", []) if row["rows"] == 1]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for server in dict.fromkeys(row["server"] for row in runs):
        points = sorted((r["concurrency"], r["throughput_rps"]["median"], r["p99_ms"]["median"])
                        for r in runs if r["server"] == server)  # fmt: skip
        c, rps, p99 = zip(*points, strict=True)
        style: dict[str, Any] = {"linewidth": 2.5} if server == SERVICE else {}
        style |= {"linestyle": ":", "color": "grey"} if server == FLOOR else {}
        left.plot(c, rps, marker="o", label=server, **style)
        right.plot(c, p99, marker="x", label=server, **style)
    left.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="requests/s",
             title="Throughput, one row per request")  # fmt: skip
    right.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="p99 ms", title="p99")
    concurrencies = sorted({row["concurrency"] for row in runs})
    for ax in (left, right):
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / PLOT, dpi=110)
    plt.close(fig)
    return PLOT

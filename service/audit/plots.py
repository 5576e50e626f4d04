"""Audit figures, drawn from the report data (results.json, roc.json) alone.

- roc_paper.png: one panel per attack, one line per defense, log-log axes
  (the low-FPR corner is where membership inference matters, Carlini et al. 2022).
- query_budget.png: worst-case AUC against answers per row, per noisy defense.
- privacy_utility.png: accuracy drop vs the worst-case AUC, per defense, one
  panel per protocol, with the label-only floor as a line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, PercentFormatter

from .labels import TITLES

DPI = 110
MARKERS = ("o", "s", "^", "D", "v")
DASHES = ("-", "--", "-.", ":")


def write_figures(results: dict[str, Any], rocs: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Every figure into ``out_dir``; returns {file name: path}."""
    out = Path(out_dir)
    figures: dict[str, Path] = {}
    for protocol in rocs:
        path = out / f"roc_{protocol.replace('-', '_')}.png"
        roc_figure(rocs[protocol], TITLES.get(protocol, protocol), path, _n_nonmembers(results))
        figures[path.name] = path
    if results.get("query_budget"):
        path = out / "query_budget.png"
        query_budget_figure(results, path)
        figures[path.name] = path
    path = out / "privacy_utility.png"
    privacy_utility_figure(results, path)
    figures[path.name] = path
    return figures


def _n_nonmembers(results: dict[str, Any]) -> int:
    return int(results["split"]["sizes"]["eval_non_members"])


def roc_figure(
    by_defense: dict[str, dict[str, Any]], title: str, path: Path, n_nonmembers: int
) -> None:
    """ROC curves on log-log axes: a panel per attack, a line per defense."""
    attacks = list(next(iter(by_defense.values())))
    cols = min(4, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols, 3.1 * rows), squeeze=False, sharex=True, sharey=True
    )
    low = 0.5 / max(n_nonmembers, 1)  # below the smallest non-zero FPR the data can show
    colours = plt.get_cmap("tab10")
    decades = [10.0**e for e in range(math.floor(math.log10(low)), 1)]
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for i, (defense, curves) in enumerate(by_defense.items()):
            fpr, tpr = (np.asarray(v, dtype=float) for v in curves[attack])
            ax.plot(
                np.maximum(fpr, low),
                np.maximum(tpr, low),
                color=colours(i % 10),
                lw=1.2,
                label=defense,
            )
        grid = np.logspace(np.log10(low), 0, 50)
        ax.plot(grid, grid, color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlim=(low, 1), ylim=(low, 1.05), title=attack)
        # Decades only: matplotlib's default log minor ticks make drawing slow.
        ax.xaxis.set_major_locator(FixedLocator(decades))
        ax.yaxis.set_major_locator(FixedLocator(decades))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(attacks) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("TPR")
    for ax in axes[-1, :]:
        ax.set_xlabel("FPR")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.suptitle(f"ROC, {title}: log-log (dashed: chance)")
    # Fixed margins: tight_layout on log axes costs seconds per figure.
    fig.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.08 + 0.1 / rows, hspace=0.3)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def query_budget_figure(results: dict[str, Any], path: Path) -> None:
    """Worst-case AUC (with its interval) against N answers per row, a line per defense;
    dashed: the undefended worst case; dotted: the label-only floor."""
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    colours = plt.get_cmap("tab10")
    by_defense: dict[str, list[dict[str, Any]]] = {}
    for row in results["query_budget"]:
        by_defense.setdefault(row["defense"], []).append(row)
    for i, (defense, rows) in enumerate(by_defense.items()):
        rows.sort(key=lambda r: r["queries"])
        n = np.array([r["queries"] for r in rows], dtype=float)
        auc = np.array([r["auc"] for r in rows])
        low = np.array([r["auc_ci"][0] for r in rows])
        high = np.array([r["auc_ci"][1] for r in rows])
        colour = colours(i % 10)
        # distinct markers and dashes: defenses often overlap exactly
        ax.plot(
            n,
            auc,
            MARKERS[i % len(MARKERS)],
            ls=DASHES[i % len(DASHES)],
            color=colour,
            label=defense,
        )
        ax.fill_between(n, low, high, color=colour, alpha=0.15)
    undefended = results["worst_case"].get("no_defense", {}).get("defense-aware")
    if undefended:
        ax.axhline(undefended["auc"], color="black", ls="--", lw=1, label="no_defense")
    for name, floor in (results.get("label_only") or {}).items():
        ax.axhline(floor["auc"], color="grey", ls=":", lw=1, label=f"label-only ({name})")
    ax.axhline(0.5, color="grey", lw=0.6)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(
        FixedLocator(sorted({r["queries"] for r in results["query_budget"]}))
    )
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel="answers per row (N)", ylabel="worst-case AUC", title="Query budget")
    ax.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.13)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def privacy_utility_figure(results: dict[str, Any], path: Path) -> None:
    """Accuracy drop vs worst-case AUC with its interval; dotted: the label-only floor."""
    protocols = [p for p in TITLES if any(p in w for w in results["worst_case"].values())]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 4.4), squeeze=False)
    base = results["utility"]["no_defense"]["accuracy"]
    colours = plt.get_cmap("tab10")
    for ax, protocol in zip(axes[0], protocols, strict=True):
        for i, (defense, by_protocol) in enumerate(results["worst_case"].items()):
            worst = by_protocol[protocol]
            drop = base - results["utility"][defense]["accuracy"]
            low, high = worst["auc_ci"]
            ax.errorbar(
                drop,
                worst["auc"],
                yerr=[[worst["auc"] - low], [high - worst["auc"]]],
                fmt="o",
                color=colours(i % 10),
                capsize=3,
                label=f"{defense} ({worst['attack']})",
            )
        for floor in (results.get("label_only") or {}).values():
            ax.axhline(floor["auc"], color="grey", lw=0.8, ls=":")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set(xlabel="accuracy drop (test set)", ylabel="worst-case AUC", title=TITLES[protocol])
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("Privacy vs utility (dotted: label-only floor; dashed: chance)")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.13, wspace=0.25)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def frontier_figure(record: dict[str, Any], path: Path) -> None:
    """`dynanoise calibrate`'s settings: accuracy drop and ECE vs worst-case AUC at the
    query budget; the frontier joined, the paper's setting and the chosen one marked."""
    settings = record["settings"]
    front = set(record["frontier"])
    chosen = (record.get("chosen") or {}).get("name")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), squeeze=False)
    families = sorted({s["params"]["output_mode"] for s in settings})
    colours = {f: plt.get_cmap("tab10")(i) for i, f in enumerate(families)}
    for ax, (key, label) in zip(
        axes[0], (("accuracy_drop", "accuracy drop"), ("ece", "ECE")), strict=True
    ):
        every_x = [
            s["accuracy_drop"] if key == "accuracy_drop" else s["utility"]["ece"] for s in settings
        ]
        middle = (min(every_x) + max(every_x)) / 2  # labels point inwards from here
        for s in settings:
            x = s["accuracy_drop"] if key == "accuracy_drop" else s["utility"]["ece"]
            worst = s["worst_case"]
            low, high = worst["auc_ci"]
            ax.errorbar(
                x,
                worst["auc"],
                yerr=[[worst["auc"] - low], [high - worst["auc"]]],
                fmt="o",
                ms=4,
                alpha=0.9 if s["within_budget"] else 0.35,
                color=colours[s["params"]["output_mode"]],
                capsize=2,
            )
            if s["name"] in (chosen, "paper_default"):
                ax.annotate(
                    "chosen" if s["name"] == chosen else "paper default",
                    (x, worst["auc"]),
                    xytext=(-6, 8) if x > middle else (6, 8),
                    textcoords="offset points",
                    ha="right" if x > middle else "left",
                    fontsize=8,
                    weight="bold",
                )
                ax.plot(x, worst["auc"], marker="*", ms=14, mfc="none", color="black")
        on_front = sorted(
            (s for s in settings if s["name"] in front),
            key=lambda s: s["accuracy_drop"] if key == "accuracy_drop" else s["utility"]["ece"],
        )
        xs = [
            s["accuracy_drop"] if key == "accuracy_drop" else s["utility"]["ece"] for s in on_front
        ]
        if key == "accuracy_drop":
            ax.plot(xs, [s["worst_case"]["auc"] for s in on_front], color="black", lw=0.8)
        floor = record.get("label_only_floor")
        if floor:
            ax.axhline(floor["auc"], color="grey", lw=0.8, ls=":")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(xlabel=f"{label} (target's test split)", ylabel="worst-case AUC")
        if key == "accuracy_drop":
            ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[f], label=f) for f in families]
    axes[0][0].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(
        f"Settings tried at {record['query_budget']} queries per row (faded: over the utility "
        "budget; line: frontier; dotted: label-only floor)",
        fontsize=9,
    )
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.13, wspace=0.22)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)

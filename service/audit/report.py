"""Audit reports: data first (results.json, roc.json, results.csv), then report.md and PNGs.

`write_report` writes everything from an `AuditOutcome`; `render` rebuilds the
markdown and the figures from the JSON files alone, so a report can be
re-rendered (or restyled) without re-running the audit.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .scoring import REPORT_KEYS

RESULTS_FILE = "results.json"
ROC_FILE = "roc.json"
CSV_FILE = "results.csv"
MARKDOWN_FILE = "report.md"

FLOOR = "label_only"
LABELS_ALONE = "top1_label_only"
PAPER_COLUMNS = ("conf", "loss", "shadow", "lira", "entropy", "mentr")
TITLES = {
    "paper": "Paper protocol (as published)",
    "defense-aware": "Defense-aware protocol (Kerckhoffs)",
}
PROTOCOL_NOTES = {
    "paper": (
        "Fixed thresholds (max p > 0.9, loss < 0.5) and attacks fitted on UNDEFENDED "
        "shadow outputs, scored on the defended target (spec section 3)."
    ),
    "defense-aware": (
        "The attacker knows the defense and its parameters (not the server's noise key): "
        "shadow outputs pass through the same defense, thresholds are recalibrated on "
        "them; plus repeated-query averaging, logit recovery (T log p) and Carlini LiRA."
    ),
}


def write_report(
    results: dict[str, Any],
    rocs: dict[str, Any],
    out_dir: Path,
    *,
    plots: bool = True,
) -> dict[str, Path]:
    """Write results.json, roc.json, results.csv, report.md and (``plots``) the PNGs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / ROC_FILE).write_text(json.dumps(_rounded(rocs, 5)) + "\n", encoding="utf-8")
    write_csv(results, out / CSV_FILE)
    return {RESULTS_FILE: out / RESULTS_FILE, ROC_FILE: out / ROC_FILE, **render(out, plots=plots)}


def render(out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """report.md (and the figures) from the results.json and roc.json in ``out_dir``."""
    out = Path(out_dir)
    results = json.loads((out / RESULTS_FILE).read_text(encoding="utf-8"))
    figures: dict[str, Path] = {}
    if plots:
        from .plots import write_figures

        rocs = json.loads((out / ROC_FILE).read_text(encoding="utf-8"))
        figures = write_figures(results, rocs, out)
    (out / MARKDOWN_FILE).write_text(
        render_markdown(results, [p.name for p in figures.values()]), encoding="utf-8"
    )
    return {CSV_FILE: out / CSV_FILE, MARKDOWN_FILE: out / MARKDOWN_FILE, **figures}


def csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per defense x protocol x attack: the five metrics, their CIs, PUT."""
    rows = []
    for defense, by_protocol in results["results"].items():
        for protocol, block in by_protocol.items():
            for attack, report in block["attacks"].items():
                row: dict[str, Any] = {"defense": defense, "protocol": protocol, "attack": attack}
                for key in REPORT_KEYS:
                    row[key] = report[key]
                    row[f"{key}_ci_low"], row[f"{key}_ci_high"] = report["ci"][key]
                row["put"] = block["put"][attack]
                row["scorer"] = report.get("scorer", "")
                rows.append(row)
    return rows


def write_csv(results: dict[str, Any], path: Path) -> None:
    rows = csv_rows(results)
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def best_attack(block: dict[str, Any], metric: str = "auc") -> tuple[str, dict[str, Any]]:
    """The score-based attack (not the label-only floor) with the highest ``metric``."""
    scored = {a: r for a, r in block["attacks"].items() if a != FLOOR}
    name = max(scored, key=lambda a: scored[a][metric])
    return name, scored[name]


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _attacks(results: dict[str, Any], protocol: str) -> list[str]:
    first = next(iter(results["results"].values()))
    names = [a for a in first[protocol]["attacks"] if a != FLOOR]
    return [*names, FLOOR]


def _accuracy_table(results: dict[str, Any], protocol: str) -> list[str]:
    attacks = _attacks(results, protocol)
    header = ["defense", "acc", *[_label(a) for a in attacks], "MIDPUT"]
    rows = []
    for defense, by_protocol in results["results"].items():
        block = by_protocol[protocol]
        rows.append(
            [
                defense,
                _f(results["utility"][defense]["accuracy"], 4),
                *[_f(block["attacks"][a]["accuracy"], 4) for a in attacks],
                _f(block["midput"], 4),
            ]
        )
    return _table(header, rows)


def _metric_table(results: dict[str, Any], protocol: str, metric: str) -> list[str]:
    attacks = _attacks(results, protocol)
    rows = []
    for defense, by_protocol in results["results"].items():
        reports = by_protocol[protocol]["attacks"]
        rows.append([defense, *[_with_ci(reports[a], metric) for a in attacks]])
    return _table(["defense", *[_label(a) for a in attacks]], rows)


def _with_ci(report: dict[str, Any], metric: str) -> str:
    low, high = report["ci"][metric]
    return f"{report[metric]:.3f} [{low:.2f}, {high:.2f}]"


def _label(attack: str) -> str:
    return "label-only floor" if attack == FLOOR else attack


def _floor_table(results: dict[str, Any], protocol: str) -> list[str]:
    rows = []
    for defense, by_protocol in results["results"].items():
        block = by_protocol[protocol]
        floor = block["attacks"][FLOOR]
        name, best = best_attack(block)
        margin = best["auc"] - floor["auc"]
        above = best["ci"]["auc"][0] > floor["auc"]
        rows.append(
            [
                defense,
                _f(floor["accuracy"]),
                _f(floor["auc"]),
                f"{name} {_f(best['auc'])}",
                f"{margin:+.3f}",
                "yes" if above else "no",
            ]
        )
    header = [
        "defense",
        "label-only acc",
        "label-only AUC",
        "best score attack (AUC)",
        "AUC above floor",
        "measurably above (CI low > floor)",
    ]
    return _table(header, rows)


def _labels_alone(results: dict[str, Any], protocol: str) -> list[str]:
    """Under top1_label_only every attack sees labels only: its best attack is the real
    floor of label-keeping defenses (per-example LiRA uses labels better than the gap)."""
    block = results["results"].get(LABELS_ALONE, {}).get(protocol)
    if block is None:
        return []
    name, best = best_attack(block)
    return [
        "",
        f"On labels alone ({LABELS_ALONE}) the best attack is {name} with AUC "
        f"{_with_ci(best, 'auc')}: what any output defense that keeps the labels still leaks.",
    ]


def _utility_table(results: dict[str, Any]) -> list[str]:
    rows = [
        [d, _f(u["accuracy"], 4), _f(u["ece"], 4), _f(u["brier"], 4), _f(u["nll"], 4)]
        for d, u in results["utility"].items()
    ]
    return _table(["defense", "accuracy", "ECE", "Brier", "NLL"], rows)


def render_markdown(results: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """The human-readable report: the paper's table shape per protocol, then AUC and
    TPR at 1 % FPR, utility, the label-only floor, figures, and how it was made."""
    config, split, target = results["config"], results["split"], results["target"]
    protocols = [p for p in TITLES if p in next(iter(results["results"].values()))]
    sizes = split["sizes"]
    lines = [
        f"# Privacy audit: {results['dataset']['name']} ({target['model_id']})",
        "",
        f"Made by: `{results['command']}`" if results.get("command") else "",
        "",
        f"Target: {target['model_id']}, queried {target['source']}"
        + (f" at {target['endpoint']} ({target['api']})" if target["source"] == "http" else "")
        + f". Data: {results['dataset']['description']}.",
        f"Split seed {split['seed']}, hash `{split['hash']}`: {sizes['members']} members, "
        f"{sizes['non_members']} non-members, evaluation set {sizes['eval_members']} + "
        f"{sizes['eval_non_members']} (balanced), test {sizes['test']}, shadow training "
        f"{sizes['shadow_train']} rows, LiRA pool {sizes['lira_pool']} rows.",
        f"Audit seed {config['seed']}; {config['n_paper_shadows']} paper shadows, "
        f"{config['n_shadows']} Carlini LiRA shadows, {config['n_queries']} queries averaged, "
        f"{config['n_bootstrap']} bootstrap resamples (95 % intervals). "
        f"DynaNoise parameters: base_variance {config['params']['base_variance']}, "
        f"lambda_scale {config['params']['lambda_scale']}, temperature "
        f"{config['params']['temperature']}, ensemble_size {config['params']['ensemble_size']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        "Attack accuracy on the balanced evaluation set (0.5 = chance, lower is better). "
        "MIDPUT = mean over the paper's six attacks of (attack accuracy without defense - "
        "with it) - accuracy drop (spec section 2); higher is better.",
    ]
    for protocol in protocols:
        lines += ["", f"## {TITLES[protocol]}", "", PROTOCOL_NOTES[protocol], ""]
        lines += _accuracy_table(results, protocol)
    for metric, title in (("auc", "AUC"), ("tpr_at_1pct_fpr", "TPR at 1 % FPR")):
        for protocol in protocols:
            lines += ["", f"## {title}, {TITLES[protocol]}", ""]
            lines += _metric_table(results, protocol, metric)
    lines += ["", "## Utility of the defended outputs (test set)", ""]
    lines += _utility_table(results)
    lines += [
        "",
        "## The label-only floor",
        "",
        "No output-only defense that keeps the labels can push the label-only attack "
        "(member iff the predicted label is correct) below its floor. A score-based attack "
        "is measurably above the floor when the lower end of its AUC interval exceeds the "
        "label-only AUC.",
    ]
    for protocol in protocols:
        lines += ["", f"### {TITLES[protocol]}", ""]
        lines += _floor_table(results, protocol)
        lines += _labels_alone(results, protocol)
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += [
        "",
        "## Defenses",
        "",
        *[f"- `{name}`: {d['description']}" for name, d in results["defenses"].items()],
        "",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _rounded(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value

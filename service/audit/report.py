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

from .labels import TITLES
from .statistics import sig3

RESULTS_FILE = "results.json"
ROC_FILE = "roc.json"
CSV_FILE = "results.csv"
MARKDOWN_FILE = "report.md"

PAPER_FLOOR = "label_only"
PAPER_COLUMNS = ("conf", "loss", "shadow", "lira", "entropy", "mentr")
PROTOCOL_NOTES = {
    "paper": (
        "Fixed thresholds (max p > 0.9, loss < 0.5) and attacks fitted on UNDEFENDED "
        "shadow outputs, scored on the defended target (the paper's split and evaluation "
        "set). Mean over the repeats; `*` marks an attack that called every row the same "
        "in some repeat (its accuracy is 0.5 whatever its AUC)."
    ),
    "defense-aware": (
        "The attacker knows the defense and its parameters (not the server's key), asks up "
        "to N times per row, exactly or with near-duplicates, averages the recovered logits "
        "T log p, and runs its shadows through its own copy of the defense (a key per "
        "shadow). Leave-one-out: every population model in turn is the target."
    ),
}
DOC_LINK = "docs/audit.md"
MATRIX_COLUMNS = (
    ("conf", "answer"),
    ("mentr", "answer"),
    ("lira_online", "repeat"),
    ("lira_online", "near_duplicate"),
    ("lira_offline", "near_duplicate"),
    ("rmia", "near_duplicate"),
    ("spread_lira", "near_duplicate"),
    ("lira_online", "parameter_change"),
    ("label_gap", "answer"),
)


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


CSV_KEYS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")


def csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per defense x protocol x attack: AUC and TPRs with intervals, pair counts."""
    rows = []
    for defense, by_protocol in results["results"].items():
        for protocol, block in by_protocol.items():
            for attack, report in block["attacks"].items():
                row: dict[str, Any] = {
                    "defense": defense,
                    "protocol": protocol,
                    "attack": attack,
                    "scorer": report["scorer"],
                    "mode": report["mode"],
                    "queries": report["queries"],
                }
                for key in CSV_KEYS:
                    low, high = report.get(f"{key}_ci") or (None, None)
                    row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = report[key], low, high
                row["accuracy"] = report.get("accuracy")
                row["one_class"] = report.get("one_class")
                row["member_pairs"] = report["member_pairs"]
                row["non_member_pairs"] = report["non_member_pairs"]
                rows.append(row)
    return rows


def write_csv(results: dict[str, Any], path: Path) -> None:
    rows = csv_rows(results)
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _interval(value: float | None, interval: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    if not interval:
        return sig3(value)
    return f"{sig3(value)} [{sig3(interval[0])}, {sig3(interval[1])}]"


def _protocols(results: dict[str, Any]) -> list[str]:
    present = {p for block in results["results"].values() for p in block}
    return [p for p in TITLES if p in present]


def _headline(results: dict[str, Any]) -> list[str]:
    protocols = _protocols(results)
    header = ["defense", "accuracy"]
    for protocol in protocols:
        short = "paper" if protocol == "paper" else "adaptive"
        header += [f"worst AUC, {short}", f"worst TPR at 1 % FPR, {short}"]
    if "paper" in protocols:
        header.append("MIDPUT (paper)")
    rows = []
    for defense, by_protocol in results["worst_case"].items():
        row = [defense, sig3(results["utility"][defense]["accuracy"])]
        for protocol in protocols:
            worst = by_protocol[protocol]
            row.append(f"{_interval(worst['auc'], worst['auc_ci'])} {worst['attack']}")
            tpr = worst["tpr_at_1pct_fpr"]
            row.append(
                f"{_interval(tpr, worst['tpr_at_1pct_fpr_ci'])} {worst['tpr_attack']}"
                if tpr is not None
                else "n/a (too few non-members)"
            )
        if "paper" in protocols:
            block = results["results"][defense]["paper"]
            row.append(_interval(block["midput"], block["midput_ci"]))
        rows.append(row)
    return _table(header, rows)


def _evaluation_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    sizes = results["split"]["sizes"]
    if "paper" in _protocols(results):
        lines.append(
            f"Paper protocol: the paper's evaluation set, {sizes['eval_members']} members and "
            f"{sizes['eval_non_members']} non-members; TPR at 1 % FPR needs 1,000 non-members "
            "and is not reported there."
        )
    evaluation = results.get("evaluation")
    if evaluation:
        lines.append(
            f"Defense-aware protocol ({evaluation['design']}): {evaluation['population']} models "
            f"of {evaluation['members_per_model']} training rows each on a pool of "
            f"{evaluation['pool_rows']} rows; {evaluation['targets']} target(s), "
            f"{evaluation['member_pairs']:,} member and {evaluation['non_member_pairs']:,} "
            "non-member (model, row) pairs."
        )
    lines.append(
        f"Intervals: 95 %, over {results['config']['repeats']} repeats (server noise, keyed "
        "secret, attacker keys and noise) and a bootstrap of the targets; a worst case is the "
        f"highest point estimate over every attack. Method: `{DOC_LINK}` in the dynanoise "
        "repository."
    )
    return lines


def _budget_table(results: dict[str, Any]) -> list[str]:
    rows_by_defense: dict[str, dict[int, dict[str, Any]]] = {}
    for row in results.get("query_budget", []):
        rows_by_defense.setdefault(row["defense"], {})[row["queries"]] = row
    if not rows_by_defense:
        return []
    budgets = sorted({n for rows in rows_by_defense.values() for n in rows})
    table = [
        [defense]
        + [
            f"{_interval(rows[n]['auc'], rows[n]['auc_ci'])} {rows[n]['attack']}"
            if n in rows
            else "-"
            for n in budgets
        ]
        for defense, rows in rows_by_defense.items()
    ]
    return _table(["defense", *[f"N = {n}" for n in budgets]], table)


def _paper_table(results: dict[str, Any]) -> list[str]:
    attacks = [*PAPER_COLUMNS, PAPER_FLOOR]
    header = ["defense", "acc", *[_label(a) for a in attacks], "MIDPUT [95 % CI]"]
    rows = []
    for defense, by_protocol in results["results"].items():
        block = by_protocol.get("paper")
        if block is None:
            continue
        cells = []
        for a in attacks:
            report = block["attacks"][a]
            cells.append(f"{report['accuracy']:.3f}{'*' if report['one_class'] else ''}")
        rows.append(
            [
                defense,
                f"{results['utility'][defense]['accuracy']:.3f}",
                *cells,
                _interval(block["midput"], block["midput_ci"]),
            ]
        )
    return _table(header, rows)


def _paper_auc_table(results: dict[str, Any]) -> list[str]:
    attacks = [*PAPER_COLUMNS, PAPER_FLOOR]
    rows = []
    for defense, by_protocol in results["results"].items():
        block = by_protocol.get("paper")
        if block is None:
            continue
        reports = block["attacks"]
        rows.append(
            [defense, *[_interval(reports[a]["auc"], reports[a]["auc_ci"]) for a in attacks]]
        )
    return _table(["defense", *[_label(a) for a in attacks]], rows)


def _adaptive_matrix(results: dict[str, Any]) -> list[str]:
    """AUC of the main adaptive attacks, each at the largest budget it ran with."""
    rows = []
    for defense, by_protocol in results["results"].items():
        block = by_protocol.get("defense-aware")
        if block is None:
            continue
        cells = []
        for scorer, mode in MATRIX_COLUMNS:
            found = [
                a for a in block["attacks"].values() if a["scorer"] == scorer and a["mode"] == mode
            ]
            if not found:
                cells.append("-")
                continue
            top = max(found, key=lambda a: a["queries"])
            cells.append(_interval(top["auc"], top["auc_ci"]))
        rows.append([defense, *cells])
    header = [
        "defense",
        *[f"{scorer} ({mode.replace('_', ' ')})" for scorer, mode in MATRIX_COLUMNS],
    ]
    return _table(header, rows)


def _label(attack: str) -> str:
    return "label-only (gap)" if attack == PAPER_FLOOR else attack


def _label_only_lines(results: dict[str, Any]) -> list[str]:
    floor = results.get("label_only") or {}
    lines = []
    for name, report in floor.items():
        lines.append(
            f"- `{name}`: AUC {_interval(report['auc'], report['auc_ci'])} on "
            f"{report['member_pairs']:,} + {report['non_member_pairs']:,} pairs, "
            f"{report['queries']} label queries per row."
        )
    return lines


def _utility_table(results: dict[str, Any]) -> list[str]:
    rows = [
        [d, f"{u['accuracy']:.4f}", f"{u['ece']:.4f}", f"{u['brier']:.4f}", f"{u['nll']:.4f}"]
        for d, u in results["utility"].items()
    ]
    return _table(["defense", "accuracy", "ECE", "Brier", "NLL"], rows)


def _gate_lines(results: dict[str, Any]) -> list[str]:
    gate = results.get("gate")
    if not gate:
        return []
    bounds = ", ".join(f"{k} {v}" for k, v in gate["bounds"].items() if v is not None)
    lines = [
        "",
        "## Gate",
        "",
        f"Bounds: {bounds}. Verdict: {'passed' if gate['passed'] else 'FAILED'}.",
    ]
    for v in gate["violations"]:
        lines.append(
            f"- {v['defense']} ({v['protocol']}): {v['metric']} {sig3(v['value'])} > "
            f"{v['bound']}, attack `{v['attack']}`"
        )
    return lines


def render_markdown(results: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """The human-readable report: the worst case first, the query-budget curve, then the
    paper's tables, the adaptive attacks, the label-only floor, utility and figures."""
    config, split, target = results["config"], results["split"], results["target"]
    protocols = _protocols(results)
    p = config["params"]
    lines = [
        f"# Privacy audit: {results['dataset']['name']} ({target['model_id']})",
        "",
        f"Made by: `{results['command']}`" if results.get("command") else "",
        "",
        f"Target: {target['model_id']}, queried {target['source']}"
        + (f" at {target['endpoint']} ({target['api']})" if target["source"] == "http" else "")
        + f". Data: {results['dataset']['description']}.",
        f"Split seed {split['seed']}, hash `{split['hash']}`. Audit seed {config['seed']}. "
        f"DynaNoise parameters: base_variance {p['base_variance']}, lambda_scale "
        f"{p['lambda_scale']}, temperature {p['temperature']}, ensemble_size "
        f"{p['ensemble_size']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        "## Worst case over every attack",
        "",
        "Membership-inference AUC (0.5 = chance) and TPR at 1 % FPR of the strongest attack "
        "found, with the attack named (`scorer/mode/queries per row`). Lower is better.",
        "",
        *_headline(results),
        "",
        *_evaluation_lines(results),
    ]
    budget = _budget_table(results)
    if budget:
        lines += [
            "",
            "## Query budget: worst-case AUC against N answers per row",
            "",
            "Defenses that answer the same row differently each time; deterministic "
            "defenses give the same answer to every query.",
            "",
            *budget,
        ]
    if "paper" in protocols:
        lines += ["", f"## {TITLES['paper']}", "", PROTOCOL_NOTES["paper"], ""]
        lines += _paper_table(results)
        lines += ["", "AUC over the repeats:", "", *_paper_auc_table(results)]
    if "defense-aware" in protocols:
        lines += ["", f"## {TITLES['defense-aware']}", "", PROTOCOL_NOTES["defense-aware"], ""]
        lines += _adaptive_matrix(results)
        lines += [
            "",
            "Every attack, budget and mode is in results.csv.",
        ]
    floor = _label_only_lines(results)
    if floor:
        lines += [
            "",
            "## The label-only floor",
            "",
            "Distance to the decision boundary estimated from labels alone (random directions "
            "and binary search on the predicted label), on the clean labels: what any defense "
            "that keeps the labels still leaks. It counts in the worst case of the defenses "
            "whose answers carry the clean labels; noisy defenses flip a few labels, which a "
            "voting attacker undoes with near-duplicates.",
            "",
            *floor,
        ]
    lines += ["", "## Utility of the defended outputs (test set, mean over repeats)", ""]
    lines += _utility_table(results)
    lines += _gate_lines(results)
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

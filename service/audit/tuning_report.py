"""`dynanoise calibrate`'s outputs: calibration.json, calibration.md and frontier.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_calibration_report(record: dict[str, Any], out_dir: Path, command: str) -> list[Path]:
    """Write the record, its table and its figure into ``out_dir``; the paths written."""
    from .plots import frontier_figure  # matplotlib only when a report is written

    out_dir.mkdir(parents=True, exist_ok=True)
    record = {**record, "command": command}
    paths = [out_dir / "calibration.json", out_dir / "calibration.md", out_dir / "frontier.png"]
    paths[0].write_text(json.dumps(record, indent=1, default=str) + "\n")
    paths[1].write_text(calibration_markdown(record))
    frontier_figure(record, paths[2])
    return paths


def calibration_markdown(record: dict[str, Any]) -> str:
    """The search as a table, the choice and the re-audit beside the search's number."""
    budget = record["utility_budget"]
    limits = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in budget.items() if v is not None)
    und = record["undefended"]
    floor = record.get("label_only_floor")
    search = record["search"]
    lines = [
        f"# Privacy calibration: {record['model_id']}",
        "",
        f"Made by: `{record.get('command', '')}` in {record['seconds']:.0f} s.",
        "",
        f"Query budget: {record['query_budget']} answers per row (attacks at N = "
        f"{', '.join(map(str, record['budgets']))}). Utility budget: {limits or 'none'}. "
        f"Undefended on the test split: accuracy {und['accuracy']:.4f}, ECE {und['ece']:.4f}, "
        f"NLL {und['nll']:.4f}.",
        "",
        f"Search population: {search['population']} models in complementary pairs on "
        f"{search['pool_rows']} of the {search['reference_rows']} reference rows (neither the "
        f"target's members nor its test split), {search['member_pairs']:,} member pairs, "
        f"{search['repeats']} repeats. Worst case: the highest AUC over every adaptive attack "
        "(repeats, near-duplicates, perturbed copies, averaging, LiRA, RMIA, the noise spread, "
        "parameter-change differencing) and, for settings that keep the clean labels, the "
        "label-only boundary attack.",
        "",
    ]
    if floor:
        lines += [
            f"Label-only floor on the search population: AUC {floor['auc']:.3f} "
            f"[{floor['auc_ci'][0]:.3f}, {floor['auc_ci'][1]:.3f}] ({floor['attack']}).",
            "",
        ]
    chosen = record.get("chosen")
    lines += [
        "| setting | worst-case AUC | attack | TPR at 1 % FPR | accuracy drop | ECE | NLL | within budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    front = set(record["frontier"])
    for s in sorted(record["settings"], key=lambda s: s["worst_case"]["auc"]):
        w = s["worst_case"]
        name = s["name"]
        marks = " (chosen)" if chosen and name == chosen["name"] else ""
        marks += " *" if name in front else ""
        tpr = w.get("tpr_at_1pct_fpr")
        lines.append(
            f"| {name}{marks} | {w['auc']:.3f} [{w['auc_ci'][0]:.3f}, {w['auc_ci'][1]:.3f}] | "
            f"{w['attack']} | {'n/a' if tpr is None else f'{tpr:.3f}'} | "
            f"{s['accuracy_drop']:+.4f} | {s['utility']['ece']:.4f} | {s['utility']['nll']:.4f} | "
            f"{'yes' if s['within_budget'] else 'no: ' + '; '.join(s['violations'])} |"
        )
    lines += [
        "",
        "`*`: on the frontier (no other setting has both a lower AUC and a higher accuracy).",
        "",
    ]
    if chosen is None:
        lines += ["**No setting fits the utility budget.**", ""]
    else:
        params = ", ".join(f"{k}={v}" for k, v in chosen["params"].items())
        lines += [f"**Chosen: {chosen['name']}** ({params}).", ""]
    re = record["reaudit"]
    lines += [
        "## Held-out re-audit",
        "",
        f"{re['population']} new models (another seed) on "
        f"{'rows the search did not use' if re['pool_disjoint_from_search'] else 'reference rows that overlap the search pool'}"
        f", {re['repeats']} repeats. The search's number is the minimum over many noisy "
        "estimates and so optimistic; this one is not selected on.",
        "",
        "| setting | search: worst AUC | re-audit: worst AUC | re-audit: attack | re-audit: TPR at 1 % FPR |",
        "|---|---|---|---|---|",
    ]
    by_name = {s["name"]: s for s in record["settings"]}
    for name, w in re["settings"].items():
        tpr = w.get("tpr_at_1pct_fpr")
        lines.append(
            f"| {name} | {by_name[name]['worst_case']['auc']:.3f} | {w['auc']:.3f} "
            f"[{w['auc_ci'][0]:.3f}, {w['auc_ci'][1]:.3f}] | {w['attack']} | "
            f"{'n/a' if tpr is None else f'{tpr:.3f}'} |"
        )
    if re.get("label_only_floor"):
        f = re["label_only_floor"]
        lines += [
            "",
            f"Label-only floor on the re-audit population: AUC {f['auc']:.3f} "
            f"[{f['auc_ci'][0]:.3f}, {f['auc_ci'][1]:.3f}].",
        ]
    lines += ["", "![frontier.png](frontier.png)", ""]
    return "\n".join(lines)

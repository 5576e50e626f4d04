"""A pass/fail verdict for pipelines: the audited defenses' worst case against bounds.

The gated defenses are every audited one except the undefended baseline; for each,
the defense-aware worst case is used when that protocol ran (it is the stronger
attacker), else the paper protocol's. A bound is exceeded by the point estimate. A
bound the evaluation cannot check (TPR at 1 % FPR with fewer than 1,000 non-member
pairs) fails too: a gate that passes what it could not measure is no gate.
"""

from __future__ import annotations

from typing import Any

from .defenses import BASELINE

GATE_METRICS = {"auc": "max_auc", "tpr_at_1pct_fpr": "max_tpr_at_1pct_fpr"}


def gate_verdict(
    results: dict[str, Any],
    *,
    max_auc: float | None = None,
    max_tpr_at_1pct_fpr: float | None = None,
) -> dict[str, Any]:
    """{"passed", "bounds", "violations": [{defense, protocol, metric, value, bound, attack}]}."""
    bounds = {"auc": max_auc, "tpr_at_1pct_fpr": max_tpr_at_1pct_fpr}
    violations = []
    for defense, by_protocol in results["worst_case"].items():
        if defense == BASELINE or not by_protocol:
            continue
        protocol = "defense-aware" if "defense-aware" in by_protocol else "paper"
        worst = by_protocol[protocol]
        for metric, bound in bounds.items():
            value = worst.get(metric)
            if bound is None or (value is not None and value <= bound):
                continue
            attack = worst["attack"] if metric == "auc" else worst["tpr_attack"]
            if value is None:
                attack = "none: too few non-member pairs to measure it"
            violations.append(
                {
                    "defense": defense,
                    "protocol": protocol,
                    "metric": metric,
                    "value": value,
                    "bound": bound,
                    "attack": attack,
                }
            )
    return {
        "passed": not violations,
        "bounds": {GATE_METRICS[m]: b for m, b in bounds.items()},
        "violations": violations,
    }


def describe(violation: dict[str, Any]) -> str:
    """One line for the terminal."""
    value = violation["value"]
    shown = "unmeasurable" if value is None else f"{value:.3g}"
    return (
        f"{violation['defense']} ({violation['protocol']}): {violation['metric']} "
        f"{shown} > {violation['bound']:g}, attack {violation['attack']}"
    )

"""`dynanoise calibrate`'s search, the torch-free part: the settings tried, the utility
budget, the choice and the frontier.

A setting is a full set of tenant parameters (output mode, DynaNoise's knobs, the
coarse mode's bucket count). Each is scored by the adaptive audit's worst case at a
query budget on the search population (shadow and reference rows only) and by its
utility on the target's held-out test rows; the chosen one has the lowest worst-case
AUC among those within the budget (ties: lower TPR at 1 % FPR, then smaller accuracy
drop, then lower ECE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..defense import MAX_CONFIDENCE_BUCKETS, DefenseParams, NoiseMode, OutputMode

PAPER = "paper_default"
"""The paper's setting (DynaNoise 0.3 / 2.0 / 10, fresh noise), always among those tried."""

BASE_VARIANCES = (0.3, 1.0, 3.0)
TEMPERATURES = (1.0, 10.0)
NOISE_MODES = (NoiseMode.FRESH, NoiseMode.KEYED_LOGITS)
"""The DynaNoise grid tried by default (lambda_scale stays at the paper's 2.0)."""


@dataclass(frozen=True)
class Setting:
    """One candidate: a name for tables and the tenant parameters it stands for."""

    name: str
    params: DefenseParams

    @property
    def family(self) -> str:
        return str(self.params.output_mode)


_SLACK = 1e-9
"""Float rounding a bound tolerates."""


@dataclass(frozen=True)
class UtilityBudget:
    """The most utility a setting may cost, against the undefended model on the same
    held-out rows; None: no bound."""

    max_accuracy_drop: float | None = None
    max_ece: float | None = None
    max_nll_increase: float | None = None

    def violations(self, utility: dict[str, float], undefended: dict[str, float]) -> list[str]:
        """Which bounds ``utility`` breaks, in words (empty: within budget). A value
        equal to its bound is within it, up to float rounding (1 - 0.89 - (1 - 0.9) is
        not exactly 0.01)."""
        broken = []
        drop = undefended["accuracy"] - utility["accuracy"]
        if self.max_accuracy_drop is not None and drop > self.max_accuracy_drop + _SLACK:
            broken.append(f"accuracy drop {drop:.4f} > {self.max_accuracy_drop:g}")
        if self.max_ece is not None and utility["ece"] > self.max_ece + _SLACK:
            broken.append(f"ECE {utility['ece']:.4f} > {self.max_ece:g}")
        increase = utility["nll"] - undefended["nll"]
        if self.max_nll_increase is not None and increase > self.max_nll_increase + _SLACK:
            broken.append(f"NLL increase {increase:.4f} > {self.max_nll_increase:g}")
        return broken


def default_settings(
    base: DefenseParams | None = None, max_buckets: int = MAX_CONFIDENCE_BUCKETS
) -> list[Setting]:
    """The paper's setting, the DynaNoise grid, calibrated_label and coarse with 2..max
    buckets; ``base`` supplies the knobs the grid does not vary."""
    p = base or DefenseParams()
    settings = [Setting(PAPER, DefenseParams())]
    for variance in BASE_VARIANCES:
        for temperature in TEMPERATURES:
            for mode in NOISE_MODES:
                params = replace(
                    p, base_variance=variance, temperature=temperature, noise_mode=mode
                )
                if params == settings[0].params:
                    continue
                name = f"dynanoise v={variance:g} T={temperature:g} {mode}"
                settings.append(Setting(name, params))
    lossy = replace(p, base_variance=DefenseParams().base_variance)
    settings.append(
        Setting("calibrated_label", replace(lossy, output_mode=OutputMode.CALIBRATED_LABEL))
    )
    for buckets in range(2, max_buckets + 1):
        settings.append(
            Setting(
                f"coarse B={buckets}",
                replace(lossy, output_mode=OutputMode.COARSE, confidence_buckets=buckets),
            )
        )
    return settings


def parse_settings(names: Iterable[str], base: DefenseParams | None = None) -> list[Setting]:
    """Only the default settings whose names are listed (the paper's always kept)."""
    wanted = set(names)
    chosen = [s for s in default_settings(base) if s.name in wanted or s.name == PAPER]
    unknown = wanted - {s.name for s in chosen}
    if unknown:
        known = [s.name for s in default_settings(base)]
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {known}")
    return chosen


@dataclass(frozen=True)
class Scored:
    """A setting with its search scores."""

    setting: Setting
    worst: dict[str, Any]  # worst_case(...) at the query budget: auc, auc_ci, attack, ...
    utility: dict[str, float]
    violations: tuple[str, ...]

    @property
    def within_budget(self) -> bool:
        return not self.violations


def choose(scored: Sequence[Scored]) -> Scored | None:
    """The lowest worst-case AUC within the utility budget (None: nothing is)."""
    eligible = [s for s in scored if s.within_budget]
    if not eligible:
        return None
    return min(eligible, key=_rank)


def _rank(s: Scored) -> tuple[float, float, float, float]:
    tpr = s.worst.get("tpr_at_1pct_fpr")
    return (
        float(s.worst["auc"]),
        float(tpr) if tpr is not None else 1.0,
        -float(s.utility["accuracy"]),
        float(s.utility["ece"]),
    )


def frontier(scored: Sequence[Scored]) -> list[Scored]:
    """The settings no other setting beats on both worst-case AUC and accuracy (lower
    AUC and higher accuracy, one of them strictly), sorted by accuracy."""
    points = sorted(scored, key=lambda s: (-s.utility["accuracy"], s.worst["auc"]))
    front: list[Scored] = []
    best_auc = float("inf")
    for s in points:
        if s.worst["auc"] < best_auc:
            front.append(s)
            best_auc = s.worst["auc"]
    return front

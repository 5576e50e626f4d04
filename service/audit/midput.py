"""MIDPUT, the paper's privacy-utility trade-off (spec section 2).

AccDrop = acc_undefended - acc_defended (top-1 on the held-out test set);
Imp_a = attack accuracy without the defense - with it (balanced evaluation set);
PUT_a = Imp_a - AccDrop; MIDPUT = mean over attacks of PUT_a.
Higher is better: privacy gained minus accuracy lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def acc_drop(acc_undefended: float, acc_defended: float) -> float:
    """AccDrop = test accuracy without defense - test accuracy with defense."""
    return acc_undefended - acc_defended


def effective_accuracy(attack_accuracy: float) -> float:
    """max(acc, 1 - acc): an attack right less than half the time is as good flipped."""
    return max(attack_accuracy, 1.0 - attack_accuracy)


def improvement(attack_acc_undefended: float, attack_acc_defended: float) -> float:
    """Imp_a on effective accuracies (max(acc, 1 - acc)); the paper's own runs are all
    >= 0.5, where this is the plain difference."""
    return effective_accuracy(attack_acc_undefended) - effective_accuracy(attack_acc_defended)


def put(attack_acc_undefended: float, attack_acc_defended: float, acc_drop: float) -> float:
    """PUT_a = Imp_a - AccDrop."""
    return improvement(attack_acc_undefended, attack_acc_defended) - acc_drop


def midput(puts: Mapping[str, float]) -> float:
    """MIDPUT = mean of the per-attack PUT_a values."""
    if not puts:
        raise ValueError("MIDPUT needs at least one attack")
    return sum(puts.values()) / len(puts)


@dataclass(frozen=True)
class MidputTable:
    """Per-attack improvement and PUT, the shared AccDrop, and their MIDPUT."""

    acc_drop: float
    improvements: dict[str, float]
    puts: dict[str, float]
    midput: float

    def as_dict(self) -> dict[str, object]:
        """Plain-data form for JSON reports."""
        return {
            "acc_drop": self.acc_drop,
            "improvements": dict(self.improvements),
            "puts": dict(self.puts),
            "midput": self.midput,
        }


def midput_table(
    acc_undefended: float,
    acc_defended: float,
    attack_acc_undefended: Mapping[str, float],
    attack_acc_defended: Mapping[str, float],
) -> MidputTable:
    """PUT_a for every attack a (same names in both mappings) and their mean.

    Attack order follows ``attack_acc_undefended``.
    """
    if set(attack_acc_undefended) != set(attack_acc_defended):
        raise ValueError("undefended and defended results must name the same attacks")
    drop = acc_drop(acc_undefended, acc_defended)
    improvements = {
        name: improvement(attack_acc_undefended[name], attack_acc_defended[name])
        for name in attack_acc_undefended
    }
    puts = {
        name: put(attack_acc_undefended[name], attack_acc_defended[name], drop)
        for name in attack_acc_undefended
    }
    return MidputTable(acc_drop=drop, improvements=improvements, puts=puts, midput=midput(puts))

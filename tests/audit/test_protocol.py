"""The audit end to end on an overfit synthetic target (both protocols, every defense),
and the paper protocol on hand-made logits whose leakage we control."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from service.audit.attacks import PAPER_ATTACK_NAMES, label_only_accuracy
from service.audit.config import AuditConfig
from service.audit.defenses import DEFENSE_NAMES, build_defenses
from service.audit.protocol import (
    PAPER_ATTACKS,
    PROTOCOLS,
    EvalSet,
    FittedOnEvaluationRows,
    ShadowLogits,
    paper_protocol,
)
from service.audit.rows import Rows
from service.audit.runner import AuditOutcome, run_audit

N_CLASSES = 10

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def overfit_audit() -> Iterator[AuditOutcome]:
    """Every defense, both protocols, on a small overfit MLP (strong leakage)."""
    config = AuditConfig(
        dataset="synthetic",
        dataset_options={"n_samples": 800},
        epochs=40,
        population=12,
        n_paper_shadows=2,
        repeats=2,
        budgets=(1, 4),
        n_bootstrap=50,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: more threads only fight the other processes
    try:
        yield run_audit(config, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_run_reports_every_defense_protocol_and_the_results_contract(
    overfit_audit: AuditOutcome,
) -> None:
    results = overfit_audit.results
    assert set(results["results"]) == set(DEFENSE_NAMES) == set(results["worst_case"])
    for by_protocol in results["results"].values():
        assert set(by_protocol) == set(PROTOCOLS)
        assert list(by_protocol["paper"]["attacks"]) == list(PAPER_ATTACKS)
        low, high = by_protocol["paper"]["midput_ci"]
        assert low <= by_protocol["paper"]["midput"] <= high
    for by_protocol in results["worst_case"].values():
        for worst in by_protocol.values():
            assert {"auc", "auc_ci", "attack", "tpr_at_1pct_fpr"} <= set(worst)
            assert worst["auc_ci"][0] <= worst["auc"] + 1e-9
    evaluation = results["evaluation"]
    assert evaluation["targets"] == 12 and evaluation["member_pairs"] == 12 * (
        evaluation["pool_rows"] // 2
    )
    assert evaluation["non_member_pairs"] == evaluation["member_pairs"]
    noisy = {row["defense"] for row in results["query_budget"]}
    assert noisy == {
        "static_gaussian",
        "dynanoise_fresh",
        "dynanoise_keyed",
        "dynanoise_keyed_logits",
    }
    assert all(row["queries"] in (1, 4) for row in results["query_budget"])
    fpr, tpr = overfit_audit.rocs["paper"]["no_defense"]["conf"]
    assert fpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0


@pytest.mark.slow
def test_midput_is_zero_for_no_defense(overfit_audit: AuditOutcome) -> None:
    results = overfit_audit.results["results"]
    assert results["no_defense"]["paper"]["midput"] == pytest.approx(0.0, abs=1e-12)
    assert len(results["dynanoise_fresh"]["paper"]["midput_by_repeat"]) == 2


@pytest.mark.slow
def test_every_attack_beats_chance_on_an_undefended_overfit_model(
    overfit_audit: AuditOutcome,
) -> None:
    block = overfit_audit.results["results"]["no_defense"]
    for name in PAPER_ATTACK_NAMES:
        assert block["paper"]["attacks"][name]["auc"] > 0.6, name
    for name in ("lira_online/repeat/1", "rmia/repeat/1", "loss/answer/1"):
        attack = block["defense-aware"]["attacks"][name]
        assert attack["auc"] > 0.6 and attack["auc_ci"][0] > 0.5, name


@pytest.mark.slow
def test_the_adaptive_attacker_undoes_dynanoise_that_fools_the_paper_protocol(
    overfit_audit: AuditOutcome,
) -> None:
    """Spec section 7: fixed thresholds call everyone a non-member, while averaging
    near-duplicates in logit space leaks about as much as no defense at all."""
    results = overfit_audit.results
    undefended = results["worst_case"]["no_defense"]["defense-aware"]["auc"]
    for name in ("dynanoise_fresh", "dynanoise_keyed"):
        paper = results["results"][name]["paper"]["attacks"]["conf"]
        assert paper["accuracy"] == pytest.approx(0.5, abs=0.03) and paper["one_class"]
        attacks = results["results"][name]["defense-aware"]["attacks"]
        averaged = attacks["lira_online/near_duplicate/4"]["auc"]
        assert averaged > attacks["lira_online/near_duplicate/1"]["auc"]
        assert averaged > undefended - 0.05
    keyed = results["results"]["dynanoise_keyed"]["defense-aware"]["attacks"]
    # Keyed noise repeats for an exact repeat: averaging exact repeats gains nothing.
    assert keyed["lira_online/repeat/4"]["auc"] == pytest.approx(
        keyed["lira_online/repeat/1"]["auc"], abs=0.02
    )
    # Keyed seeds are bound to the parameters: two answers around a base_variance change
    # are two independent draws, and differencing them amplifies the noise.
    assert keyed["lira_online/parameter_change/2"]["auc"] < undefended - 0.1


# ---------------------------------------------------------------- hand-made logits


def _logits(rng: np.random.Generator, y: NDArray[np.int64], member: NDArray[np.bool_]) -> Any:
    """An overfit model: members get a large, tight true-class boost."""
    z = rng.normal(size=(len(y), N_CLASSES))
    boost = np.where(member, rng.normal(6.0, 1.0, len(y)), rng.normal(2.5, 2.0, len(y)))
    z[np.arange(len(y)), y] += boost
    return z.astype(np.float32)


def _rows(rng: np.random.Generator, n: int, start: int = 0) -> Rows:
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return Rows(x, rng.integers(0, N_CLASSES, n), np.arange(start, start + n))


def _scenario(seed: int = 0, n: int = 300) -> tuple[ShadowLogits, EvalSet, Any]:
    rng = np.random.default_rng(seed)
    shadow_in, shadow_out = _rows(rng, n), _rows(rng, n, start=n)
    eval_rows = _rows(rng, 2 * n, start=2 * n)
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    shadows = ShadowLogits(
        shadow_in=shadow_in,
        shadow_out=shadow_out,
        paper_in=[_logits(rng, shadow_in.y, np.ones(n, bool)) for _ in range(2)],
        paper_out=[_logits(rng, shadow_out.y, np.zeros(n, bool)) for _ in range(2)],
    )
    return shadows, EvalSet(eval_rows, is_member), _logits(rng, eval_rows.y, is_member)


def test_label_only_attack_equals_its_closed_form() -> None:
    shadows, eval_set, logits = _scenario()
    (noisy,) = build_defenses(["dynanoise_fresh"])
    probs = noisy(logits, eval_set.rows.x, np.random.default_rng(1))
    results = paper_protocol(shadows, probs, eval_set, seed=0, n_bootstrap=20)
    correct = probs.argmax(axis=1) == eval_set.rows.y
    expected = label_only_accuracy(
        correct[eval_set.is_member].mean(), correct[~eval_set.is_member].mean()
    )
    assert results["label_only"].report["accuracy"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["dynanoise_keyed", "dynanoise_keyed_logits"])
def test_defense_aware_attacker_uses_its_own_key(name: str) -> None:
    (keyed,) = build_defenses([name], secret=b"server", model_id="m@1")
    mimic = keyed.for_attacker(np.random.default_rng(0))
    other = keyed.for_attacker(np.random.default_rng(1))
    logits = np.random.default_rng(2).normal(size=(3, N_CLASSES)).astype(np.float32)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    rng = np.random.default_rng(0)
    assert mimic.parameters() == keyed.parameters() and mimic.name == keyed.name
    assert not np.allclose(keyed(logits, x, rng), mimic(logits, x, rng))
    assert not np.allclose(other(logits, x, rng), mimic(logits, x, rng))  # a key per shadow
    np.testing.assert_array_equal(mimic(logits, x, rng), mimic(logits, x, rng))


def test_an_attack_fitted_on_evaluation_rows_is_refused() -> None:
    shadows, eval_set, logits = _scenario()
    (none,) = build_defenses(["no_defense"])
    probs = none(logits, eval_set.rows.x, np.random.default_rng(0))
    leaky = EvalSet(
        Rows(
            eval_set.rows.x, eval_set.rows.y, eval_set.rows.index - 2 * len(shadows.shadow_in.y) + 5
        ),
        eval_set.is_member,
    )
    with pytest.raises(FittedOnEvaluationRows, match="evaluation rows"):
        paper_protocol(shadows, probs, leaky, seed=0, n_bootstrap=10)

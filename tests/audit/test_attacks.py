"""Membership attacks on output probabilities: features, decision rules, and leakage found."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from service.audit.attacks import (
    AttackNotFitted,
    ConfidenceAttack,
    LabelOnlyAttack,
    LossAttack,
    MembershipAttack,
    PaperLiRAAttack,
    ShadowModelAttack,
    best_threshold,
    cross_entropy,
    entropy,
    entropy_attack,
    feature_matrix,
    label_only_accuracy,
    lira_offline,
    lira_online,
    logit_confidence,
    modified_entropy,
    modified_entropy_attack,
    paper_attacks,
    recover_logits,
)
from service.audit.scoring import roc_auc
from service.audit.utility import accuracy

Outputs = tuple[NDArray[np.float64], NDArray[np.intp]]
N_CLASSES = 10


def _softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _logits(rng: np.random.Generator, n: int, *, member: bool) -> tuple[NDArray, NDArray]:
    """Logits of an overfit model: members get a large, tight true-class boost."""
    labels = rng.integers(0, N_CLASSES, n)
    logits = rng.normal(size=(n, N_CLASSES))
    boost = rng.normal(6.0, 1.0, n) if member else rng.normal(2.5, 2.0, n)
    logits[np.arange(n), labels] += boost
    return logits, labels


def _outputs(
    rng: np.random.Generator, n: int, *, member: bool, temperature: float = 1.0
) -> Outputs:
    logits, labels = _logits(rng, n, member=member)
    return _softmax(logits / temperature), labels


def _evaluation_set(members: Outputs, nonmembers: Outputs) -> tuple[NDArray, NDArray, NDArray]:
    probs = np.vstack([members[0], nonmembers[0]])
    labels = np.concatenate([members[1], nonmembers[1]])
    is_member = np.r_[np.ones(len(members[1]), bool), np.zeros(len(nonmembers[1]), bool)]
    return probs, labels, is_member


ATTACKS: dict[str, Callable[[], MembershipAttack]] = {
    "conf": ConfidenceAttack,
    "conf_recalibrated": lambda: ConfidenceAttack(recalibrate=True),
    "loss": LossAttack,
    "loss_recalibrated": lambda: LossAttack(recalibrate=True),
    "shadow": ShadowModelAttack,
    "paper_lira": PaperLiRAAttack,
    "entropy": entropy_attack,
    "mentr": modified_entropy_attack,
    "label_only": LabelOnlyAttack,
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_beats_chance_on_overfit_outputs(name: str) -> None:
    rng = np.random.default_rng(1)
    attack = ATTACKS[name]().fit(
        *_outputs(rng, 1000, member=True), *_outputs(rng, 1000, member=False)
    )
    probs, labels, is_member = _evaluation_set(
        _outputs(rng, 1000, member=True), _outputs(rng, 1000, member=False)
    )
    assert roc_auc(attack.score(probs, labels), is_member) > 0.6
    assert np.mean(attack.predict(probs, labels) == is_member) > 0.6


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_at_chance_when_members_and_nonmembers_look_alike(name: str) -> None:
    rng = np.random.default_rng(2)
    attack = ATTACKS[name]().fit(
        *_outputs(rng, 1000, member=True), *_outputs(rng, 1000, member=False)
    )
    probs, labels, is_member = _evaluation_set(
        _outputs(rng, 2000, member=False), _outputs(rng, 2000, member=False)
    )
    assert roc_auc(attack.score(probs, labels), is_member) == pytest.approx(0.5, abs=0.05)
    assert np.mean(attack.predict(probs, labels) == is_member) == pytest.approx(0.5, abs=0.05)


def test_factories_build_attacks_that_follow_the_contract() -> None:
    assert [a.name for a in paper_attacks()] == [
        "conf",
        "loss",
        "shadow",
        "lira",
        "entropy",
        "mentr",
    ]
    for attack in [*paper_attacks(), LabelOnlyAttack()]:
        assert isinstance(attack, MembershipAttack)


def test_features_take_known_values_on_one_hot_and_uniform_rows() -> None:
    probs = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    labels = np.array([0, 2])
    np.testing.assert_allclose(entropy(probs), [0.0, np.log(4)], atol=1e-12)
    np.testing.assert_allclose(cross_entropy(probs, labels), [0.0, np.log(4)], atol=1e-12)
    # Uniform over 4: 0.75 log 4 - 3 * 0.25 log 0.75.
    np.testing.assert_allclose(
        modified_entropy(probs, labels), [0.0, 0.75 * np.log(4) - 0.75 * np.log(0.75)], atol=1e-12
    )
    np.testing.assert_allclose(logit_confidence(probs, labels)[1], np.log(0.25 / 0.75))
    assert feature_matrix(probs, labels).shape == (2, 5)


def test_modified_entropy_is_high_for_a_confident_wrong_prediction() -> None:
    probs = np.array([[0.98, 0.01, 0.01]])
    assert modified_entropy(probs, np.array([0])) < 0.1 < modified_entropy(probs, np.array([1]))


def test_logit_confidence_keeps_precision_near_one_and_stays_finite() -> None:
    probs = np.array([[1.0 - 2e-12, 1e-12, 1e-12], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    phi = logit_confidence(probs, np.array([0, 0, 0]))
    assert phi[0] == pytest.approx(np.log(1.0 / 2e-12), rel=1e-6)
    assert np.all(np.isfinite(phi))
    assert phi[1] > phi[0] > 0 > phi[2]


def test_features_reject_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(np.full((2, 3), 1 / 3), np.array([0, 3]))


def test_fixed_thresholds_apply_the_paper_rules() -> None:
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 0, 1, 0])
    conf = ConfidenceAttack().fit(probs, labels, probs, labels)
    loss = LossAttack().fit(probs, labels, probs, labels)
    assert conf.predict(probs, labels).tolist() == [True, False, False, False]
    # loss = -log p_y: 0.051, 0.163, 0.357, 0.693 against 0.5.
    assert loss.predict(probs, labels).tolist() == [True, True, True, False]
    assert conf.threshold == 0.9 and loss.loss_threshold == 0.5


def test_best_threshold_splits_separable_scores_at_the_midpoint() -> None:
    assert best_threshold([0.7, 0.9], [0.1, 0.3]) == pytest.approx(0.5)
    # Two splits tie at balanced accuracy 0.75: the lower one wins.
    assert best_threshold([0.8, 0.9], [0.1, 0.85]) == pytest.approx(0.45)


def test_recalibration_recovers_leakage_that_a_high_temperature_hides_from_fixed_rules() -> None:
    rng = np.random.default_rng(3)
    temperature = 10.0
    shadow = (
        _outputs(rng, 1000, member=True, temperature=temperature),
        _outputs(rng, 1000, member=False, temperature=temperature),
    )
    probs, labels, is_member = _evaluation_set(
        _outputs(rng, 1000, member=True, temperature=temperature),
        _outputs(rng, 1000, member=False, temperature=temperature),
    )
    for make in (ConfidenceAttack, LossAttack):
        fixed = make().fit(*shadow[0], *shadow[1])
        recalibrated = make(recalibrate=True).fit(*shadow[0], *shadow[1])
        assert np.mean(fixed.predict(probs, labels) == is_member) == pytest.approx(0.5, abs=0.01)
        assert np.mean(recalibrated.predict(probs, labels) == is_member) > 0.75


def test_class_threshold_attack_falls_back_to_global_threshold_for_rare_classes() -> None:
    rng = np.random.default_rng(4)
    member, nonmember = _outputs(rng, 400, member=True), _outputs(rng, 400, member=False)
    rare = 0
    keep_in, keep_out = member[1] != rare, nonmember[1] != rare
    keep_in[np.flatnonzero(member[1] == rare)[:2]] = True
    attack = entropy_attack(min_class_samples=5).fit(
        member[0][keep_in], member[1][keep_in], nonmember[0][keep_out], nonmember[1][keep_out]
    )
    assert rare not in attack.class_thresholds_
    assert set(attack.class_thresholds_) == set(range(1, N_CLASSES))
    thresholds = attack.thresholds_for(np.array([rare, 1]))
    assert thresholds[0] == attack.global_threshold_
    assert thresholds[1] == attack.class_thresholds_[1]


def test_per_class_thresholds_beat_one_global_threshold_when_classes_differ() -> None:
    rng = np.random.default_rng(5)

    def outputs(n: int, member: bool) -> Outputs:
        labels = rng.integers(0, 2, n)
        logits = rng.normal(size=(n, 4))
        easy_boost, hard_boost = (7.0, 3.0) if member else (5.0, 1.0)
        logits[np.arange(n), labels] += np.where(labels == 0, easy_boost, hard_boost)
        return _softmax(logits), labels

    shadow_in, shadow_out = outputs(2000, True), outputs(2000, False)
    probs, labels, is_member = _evaluation_set(outputs(2000, True), outputs(2000, False))
    per_class = entropy_attack().fit(*shadow_in, *shadow_out)
    global_only = entropy_attack(min_class_samples=10**6).fit(*shadow_in, *shadow_out)
    acc_per_class = np.mean(per_class.predict(probs, labels) == is_member)
    acc_global = np.mean(global_only.predict(probs, labels) == is_member)
    assert acc_per_class > acc_global + 0.03


@pytest.mark.parametrize(
    "attack", [ShadowModelAttack(), PaperLiRAAttack(), entropy_attack()], ids=lambda a: a.name
)
def test_learned_attacks_refuse_to_score_before_fit(attack: MembershipAttack) -> None:
    with pytest.raises(AttackNotFitted):
        attack.score(np.full((1, 2), 0.5), np.array([0]))


def test_label_only_measured_accuracy_equals_its_closed_form() -> None:
    rng = np.random.default_rng(6)
    members, nonmembers = _outputs(rng, 700, member=True), _outputs(rng, 700, member=False)
    probs, labels, is_member = _evaluation_set(members, nonmembers)
    measured = np.mean(LabelOnlyAttack().predict(probs, labels) == is_member)
    closed_form = label_only_accuracy(accuracy(*members), accuracy(*nonmembers))
    assert measured == pytest.approx(closed_form, abs=1e-12)
    assert 0.55 < closed_form < 1.0


def test_label_only_accuracy_is_half_without_a_generalisation_gap() -> None:
    assert label_only_accuracy(0.8, 0.8) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        label_only_accuracy(1.2, 0.5)


def test_recover_logits_inverts_temperature_softmax_up_to_a_constant() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(scale=5.0, size=(50, 6))
    recovered = recover_logits(_softmax(logits / 10.0), 10.0)
    np.testing.assert_allclose(recovered, logits - logits.mean(axis=1, keepdims=True), atol=1e-8)


def _lira_population(seed: int) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """phi = difficulty + shift * trained_on + noise; only half the examples are vulnerable."""
    rng = np.random.default_rng(seed)
    n_shadows, n_examples = 16, 2000
    difficulty = rng.normal(0.0, 2.0, n_examples)
    shift = np.where(rng.random(n_examples) < 0.5, 3.0, 0.0)
    in_mask = rng.random((n_shadows, n_examples)) < 0.5
    shadow_phi = difficulty + shift * in_mask + rng.normal(size=(n_shadows, n_examples))
    is_member = rng.random(n_examples) < 0.5
    target_phi = difficulty + shift * is_member + rng.normal(size=n_examples)
    return target_phi, shadow_phi, in_mask, is_member


@pytest.mark.parametrize("global_variance", [False, True])
def test_lira_online_beats_offline_which_beats_uncalibrated_confidence(
    global_variance: bool,
) -> None:
    target_phi, shadow_phi, in_mask, is_member = _lira_population(10)
    online = roc_auc(
        lira_online(target_phi, shadow_phi, in_mask, global_variance=global_variance), is_member
    )
    offline = roc_auc(
        lira_offline(target_phi, shadow_phi, in_mask, global_variance=global_variance), is_member
    )
    raw = roc_auc(target_phi, is_member)
    assert online > offline + 0.03
    assert offline > raw + 0.03
    assert raw > 0.55


def test_lira_is_at_chance_when_training_does_not_move_phi() -> None:
    rng = np.random.default_rng(11)
    shadow_phi = rng.normal(size=(8, 3000))
    in_mask = rng.random((8, 3000)) < 0.5
    is_member = rng.random(3000) < 0.5
    target_phi = rng.normal(size=3000)
    for scorer in (lira_online, lira_offline):
        scores = scorer(target_phi, shadow_phi, in_mask)
        assert np.all(np.isfinite(scores))
        assert roc_auc(scores, is_member) == pytest.approx(0.5, abs=0.04)


def test_lira_handles_examples_no_shadow_trained_on() -> None:
    target_phi, shadow_phi, in_mask, _ = _lira_population(12)
    in_mask[:, :10] = False
    assert np.all(np.isfinite(lira_online(target_phi, shadow_phi, in_mask)))


def test_lira_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        lira_online(np.zeros(3), np.zeros((4, 3)), np.zeros((4, 2), bool))

"""The output defenses an audit compares, each a named map (logits, inputs) -> probabilities.

Every defense acts on the clean logits z (n, k) of the same target model and
returns probabilities (n, k). Randomness comes from the caller's generator; the
keyed DynaNoise variant draws from HMAC(secret, parameters, model id + input)
instead, through ``service.defense.defend`` exactly as the server draws (a change of
parameters draws anew there too), so an attacker-side copy (``for_attacker``) keeps
the mechanism and the parameters but not the server's secret (Kerckhoffs: the key
is the only thing kept private).
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ..defense import (
    CalibrationMissing,
    DefenseParams,
    NoiseMode,
    OutputCalibration,
    OutputMode,
    defend,
    no_defense,
    sensitivity,
    static_gaussian,
    temperature_only,
    top1_label_only,
    top_k_rounded,
)

Probabilities = NDArray[np.float64]
BaselineFunction = Callable[[NDArray[Any], np.random.Generator], NDArray[Any]]

DEFENSE_NAMES = (
    "no_defense",
    "temperature_only",
    "static_gaussian",
    "top1_label_only",
    "top_k_rounded",
    "dynanoise_fresh",
    "dynanoise_keyed",
    "dynanoise_keyed_logits",
    "calibrated_label",
    "coarse",
)
"""Every defense `build_defenses` knows, in report order (the baseline first)."""

BASELINE = "no_defense"
TOP_K = 3
TOP_K_DECIMALS = 1


class UnknownDefense(ValueError):
    """A defense name that `build_defenses` does not know."""


@runtime_checkable
class AuditedDefense(Protocol):
    """A named output defense; ``__call__(logits, inputs, rng)`` gives probabilities."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def temperature(self) -> float:
        """The T an attacker who knows the mechanism uses for logit recovery (1 = none)."""
        ...

    @property
    def repeats_for_identical_input(self) -> bool:
        """True when the same input always gets the same answer (averaging gains nothing)."""
        ...

    def __call__(
        self, logits: NDArray[Any], inputs: NDArray[Any], rng: np.random.Generator
    ) -> Probabilities: ...

    def parameters(self) -> dict[str, Any]:
        """Plain-data parameters for the report (never a secret)."""
        ...

    def for_attacker(self, rng: np.random.Generator) -> AuditedDefense:
        """The copy a defense-aware attacker runs on its shadows: same mechanism and
        parameters, and for keyed noise a secret of its own (drawn from ``rng``)."""
        ...


@dataclass(frozen=True, eq=False)
class Baseline:
    """A stateless baseline from service.defense, wrapped to the audit's signature."""

    name: str
    description: str
    function: BaselineFunction = field(repr=False)
    temperature: float = 1.0
    repeats_for_identical_input: bool = True
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(
        self, logits: NDArray[Any], inputs: NDArray[Any], rng: np.random.Generator
    ) -> Probabilities:
        return np.asarray(self.function(logits, rng), dtype=np.float64)

    def parameters(self) -> dict[str, Any]:
        return dict(self.params)

    def for_attacker(self, rng: np.random.Generator) -> Baseline:
        return self


@dataclass(frozen=True, eq=False)
class DynaNoiseDefense:
    """DynaNoise with ``params``; keyed mode needs ``secret`` and the target's ``model_id``."""

    name: str
    params: DefenseParams
    secret: bytes | None = field(default=None, repr=False)
    model_id: str = ""
    description: str = ""

    @property
    def temperature(self) -> float:
        return self.params.temperature

    @property
    def repeats_for_identical_input(self) -> bool:
        return self.params.noise_mode is NoiseMode.KEYED or not self.params.adds_noise

    def __call__(
        self, logits: NDArray[Any], inputs: NDArray[Any], rng: np.random.Generator
    ) -> Probabilities:
        out = defend(
            logits, self.params, rng=rng, secret=self.secret, model_id=self.model_id, inputs=inputs
        )
        return np.asarray(out.probabilities, dtype=np.float64)

    def parameters(self) -> dict[str, Any]:
        p = self.params
        return {
            "base_variance": p.base_variance,
            "lambda_scale": p.lambda_scale,
            "temperature": p.temperature,
            "ensemble_size": p.ensemble_size,
            "sensitivity": str(p.sensitivity),
            "noise_mode": str(p.noise_mode),
        }

    def for_attacker(self, rng: np.random.Generator) -> DynaNoiseDefense:
        # Both keyed modes (input bytes or quantized logits) take a key of the attacker's.
        if self.params.noise_mode is NoiseMode.FRESH:
            return self
        return replace(self, secret=rng.bytes(32))


@dataclass(frozen=True, eq=False)
class LossyDefense:
    """calibrated_label or coarse: each model's held-out answer table, looked up by
    (predicted label, confidence bucket); ``calibrations`` by model id (fitted on rows
    the model never trained on). Deterministic, so asking again gains nothing."""

    name: str
    params: DefenseParams
    calibrations: Mapping[str, OutputCalibration] = field(repr=False)
    model_id: str = ""
    description: str = ""

    temperature = 1.0  # the answers are probabilities; nothing to undo
    repeats_for_identical_input = True

    def __call__(
        self, logits: NDArray[Any], inputs: NDArray[Any], rng: np.random.Generator
    ) -> Probabilities:
        table = self.calibrations.get(self.model_id)
        if table is None:
            raise CalibrationMissing(f"no output calibration for model {self.model_id!r}")
        buckets = min(self.params.buckets, table.max_buckets)
        return np.asarray(table.answer(logits, buckets), dtype=np.float64)

    def parameters(self) -> dict[str, Any]:
        return {"output_mode": str(self.params.output_mode), "buckets": self.params.buckets}

    def for_attacker(self, rng: np.random.Generator) -> LossyDefense:
        return (
            self  # no secret: the tables are the mechanism, and the attacker's shadows have theirs
        )


def mean_sensitivity(logits: NDArray[Any], params: DefenseParams) -> float:
    """Mean R of the clean logits, with the sensitivity measure of ``params``."""
    return float(sensitivity(logits, params.sensitivity).mean())


def static_sigma(params: DefenseParams, average_sensitivity: float) -> float:
    """sigma = sqrt(sigma0^2 (1 + lambda * mean R)): DynaNoise's noise at the average R,
    so the static baseline adds as much noise on average, just not where the risk is."""
    return float(np.sqrt(params.base_variance * (1.0 + params.lambda_scale * average_sensitivity)))


def build_defenses(
    names: Sequence[str],
    *,
    params: DefenseParams | None = None,
    average_sensitivity: float = 0.0,
    secret: bytes | None = None,
    model_id: str = "",
    calibrations: Mapping[str, OutputCalibration] | None = None,
) -> list[AuditedDefense]:
    """The named defenses, in ``DEFENSE_NAMES`` order whatever the order asked.

    ``params`` are DynaNoise's (default: the paper's 0.3 / 2.0 / 10 / 1); temperature
    only and the static Gaussian reuse its temperature, and the static Gaussian its
    average noise (``average_sensitivity`` = mean R on the target's clean outputs).
    ``secret`` keys dynanoise_keyed (a fresh random one when None). calibrated_label
    and coarse (with ``params.confidence_buckets``) answer from ``calibrations``.
    """
    unknown = sorted(set(names) - set(DEFENSE_NAMES))
    if unknown:
        raise UnknownDefense(f"unknown defenses {unknown}; choose from {list(DEFENSE_NAMES)}")
    p = params or DefenseParams()
    t = p.temperature
    sigma = static_sigma(p, average_sensitivity)
    keyed_secret = secret if secret is not None else _secrets.token_bytes(32)
    catalogue: dict[str, Callable[[], AuditedDefense]] = {
        "no_defense": lambda: Baseline(
            "no_defense", "softmax(z), the model's own output", lambda z, _: no_defense(z)
        ),
        "temperature_only": lambda: Baseline(
            "temperature_only",
            f"softmax(z / {t:g}), no noise",
            lambda z, _: temperature_only(z, t),
            temperature=t,
            params={"temperature": t},
        ),
        "static_gaussian": lambda: Baseline(
            "static_gaussian",
            f"softmax((z + e) / {t:g}), e ~ N(0, {sigma:.3f}^2 I) for every query",
            lambda z, rng: static_gaussian(z, sigma, rng, temperature=t),
            temperature=t,
            repeats_for_identical_input=False,
            params={"std": sigma, "temperature": t, "mean_sensitivity": average_sensitivity},
        ),
        "top1_label_only": lambda: Baseline(
            "top1_label_only", "one-hot of the argmax", lambda z, _: top1_label_only(z)
        ),
        "top_k_rounded": lambda: Baseline(
            "top_k_rounded",
            f"top-{TOP_K} probabilities rounded to {TOP_K_DECIMALS} decimal",
            lambda z, _: top_k_rounded(z, TOP_K, TOP_K_DECIMALS),
            params={"k": TOP_K, "decimals": TOP_K_DECIMALS},
        ),
        "dynanoise_fresh": lambda: DynaNoiseDefense(
            "dynanoise_fresh",
            replace(p, noise_mode=NoiseMode.FRESH),
            description="DynaNoise, fresh noise per call (the paper)",
        ),
        "dynanoise_keyed": lambda: DynaNoiseDefense(
            "dynanoise_keyed",
            replace(p, noise_mode=NoiseMode.KEYED),
            secret=keyed_secret,
            model_id=model_id,
            description="DynaNoise, noise keyed to (secret, model, input)",
        ),
        "dynanoise_keyed_logits": lambda: DynaNoiseDefense(
            "dynanoise_keyed_logits",
            replace(p, noise_mode=NoiseMode.KEYED_LOGITS),
            secret=keyed_secret,
            model_id=model_id,
            description="DynaNoise, noise keyed to (secret, model, logits quantized to sigma0)",
        ),
        "calibrated_label": lambda: LossyDefense(
            "calibrated_label",
            replace(p, output_mode=OutputMode.CALIBRATED_LABEL),
            dict(calibrations or {}),
            model_id=model_id,
            description="held-out class distribution of the predicted label",
        ),
        "coarse": lambda: LossyDefense(
            "coarse",
            replace(p, output_mode=OutputMode.COARSE),
            dict(calibrations or {}),
            model_id=model_id,
            description=(
                f"held-out class distribution of (label, one of {p.confidence_buckets} "
                "confidence buckets)"
            ),
        ),
    }
    return [catalogue[name]() for name in DEFENSE_NAMES if name in names]


def served_defense(params: DefenseParams, name: str = "served") -> DynaNoiseDefense:
    """The defense of a live deployment, as the attacker models it: the tenant's
    parameters, no secret (the server's key never leaves it)."""
    return DynaNoiseDefense(
        name, params, description=f"the deployment's DynaNoise ({params.noise_mode} noise)"
    )


SERVED = "served"
LOSSY_DEFENSES = frozenset({"calibrated_label", "coarse"})


def needs_calibration(factory: DefenseFactory) -> bool:
    """Whether any defense of ``factory`` answers from held-out tables."""
    served_lossy = factory.served is not None and factory.served.lossy
    return served_lossy or bool(LOSSY_DEFENSES.intersection(factory.requested))


@dataclass(frozen=True)
class DefenseFactory:
    """The audited defenses, rebuilt for every repeat of an audit.

    Repeat r keys ``dynanoise_keyed`` with a secret of its own (drawn from ``seed``
    and r), so that figures carry the spread over keys, not the luck of one key.
    ``served``: a live deployment's parameters, audited as the defense "served".
    """

    requested: tuple[str, ...]
    params: DefenseParams
    average_sensitivity: float
    model_id: str
    seed: int
    served: DefenseParams | None = None
    calibrations: Mapping[str, OutputCalibration] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Report order: the in-process defenses, then the served one."""
        local = [name for name in DEFENSE_NAMES if name in self.requested]
        return [*local, SERVED] if self.served is not None else local

    def all(self, repeat: int) -> list[AuditedDefense]:
        return [self.get(name, repeat) for name in self.names]

    def get(self, name: str, repeat: int) -> AuditedDefense:
        """Defense ``name`` as the server runs it in repeat ``repeat``."""
        if name == SERVED:
            if self.served is None:
                raise UnknownDefense("no served defense in this audit")
            if self.served.lossy:  # the attacker's shadows answer from their own tables
                return LossyDefense(
                    SERVED,
                    self.served,
                    self.calibrations,
                    description=f"the deployment's {self.served.output_mode} answers",
                )
            return served_defense(self.served)
        secret = np.random.default_rng([self.seed, repeat, 0x5EC2E7]).bytes(32)
        (defense,) = build_defenses(
            [name],
            params=self.params,
            average_sensitivity=self.average_sensitivity,
            secret=secret,
            model_id=self.model_id,
            calibrations=self.calibrations,
        )
        return defense


def defense_for_params(
    name: str,
    params: DefenseParams,
    *,
    secret: bytes | None = None,
    model_id: str = "",
    calibrations: Mapping[str, OutputCalibration] | None = None,
) -> AuditedDefense:
    """The defense a tenant with ``params`` gets: lossy answers from ``calibrations``,
    else DynaNoise (keyed modes with ``secret``)."""
    if params.lossy:
        return LossyDefense(name, params, dict(calibrations or {}), model_id=model_id)
    keyed = params.noise_mode is not NoiseMode.FRESH
    return DynaNoiseDefense(name, params, secret=secret if keyed else None, model_id=model_id)

"""What an audit is asked to do: `AuditConfig`, and `HttpTarget` for a live deployment.

Plain settings, no torch: the command line builds them before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..defense import DefenseParams
from .attacks.adaptive import QUERY_BUDGETS
from .defenses import DEFENSE_NAMES
from .oracle import Endpoint
from .protocol import PROTOCOLS


@dataclass(frozen=True)
class AuditConfig:
    """What to audit and how hard. None means: take the data set's training recipe.

    ``population``: models of the leave-one-out design (None: enough for 10,000
    member pairs in process, 64 shadows against a live deployment); ``repeats``:
    server noise draws, keyed secrets and attacker seeds every figure is repeated
    over; ``budgets``: answers per row of the adaptive attacker.
    """

    dataset: str = "digits"
    protocols: tuple[str, ...] = PROTOCOLS
    defenses: tuple[str, ...] = DEFENSE_NAMES
    params: DefenseParams = field(default_factory=DefenseParams)
    seed: int = 0
    population: int | None = None
    n_paper_shadows: int = 3
    repeats: int = 5
    budgets: tuple[int, ...] = QUERY_BUDGETS
    n_bootstrap: int = 200
    max_members: int | None = None
    epochs: int | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None
    label_only: bool = True

    def __post_init__(self) -> None:
        bad = sorted(set(self.protocols) - set(PROTOCOLS))
        if bad or not self.protocols:
            raise ValueError(
                f"protocols must be among {list(PROTOCOLS)}, got {list(self.protocols)}"
            )
        # Leave-one-out leaves a target and its partner out: K/2 - 1 >= 2 shadows a side.
        if self.population is not None and (self.population < 6 or self.population % 2):
            raise ValueError("population must be an even number of models, at least 6")
        if self.n_paper_shadows < 1 or self.repeats < 1 or not self.budgets:
            raise ValueError("need n_paper_shadows >= 1, repeats >= 1 and at least one budget")
        if min(self.budgets) < 1:
            raise ValueError("query budgets must be >= 1")


@dataclass(frozen=True)
class HttpTarget:
    """A live deployment: its URL, a tenant's key, the model and the tenant's parameters
    (known to the attacker by assumption; only the noise key stays secret)."""

    base_url: str
    api_key: str
    model: str
    params: DefenseParams = field(default_factory=DefenseParams)
    endpoint: Endpoint = "v1"
    batch_size: int = 1024

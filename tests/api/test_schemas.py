"""The admin API's defense parameters are DefenseParams', stated once."""

from __future__ import annotations

from dataclasses import fields

import pytest

from service.api.schemas import TenantCreate, TenantUpdate
from service.defense import DefenseParams, InvalidParameters
from service.defense.params import PARAMETER_NAMES, RANGES


def test_create_schema_defaults_and_ranges_are_defense_params() -> None:
    schema = TenantCreate.model_json_schema()["properties"]
    defaults = DefenseParams()
    assert tuple(f.name for f in fields(DefenseParams)) == PARAMETER_NAMES
    for name in PARAMETER_NAMES:
        assert TenantCreate.model_fields[name].default == getattr(defaults, name), name
        assert TenantUpdate.model_fields[name].default is None, name
    for name, valid in RANGES.items():
        bound = "minimum" if valid.inclusive else "exclusiveMinimum"
        assert schema[name][bound] == valid.low, name
        if valid.high is not None:
            assert schema[name]["maximum"] == valid.high


@pytest.mark.parametrize("name", sorted(RANGES))
def test_defense_params_enforce_the_published_ranges(name: str) -> None:
    valid = RANGES[name]
    below = valid.low if not valid.inclusive else valid.low - 1
    with pytest.raises(InvalidParameters, match=name):
        DefenseParams(**{name: type(getattr(DefenseParams(), name))(below)})
    if valid.high is not None:
        with pytest.raises(InvalidParameters, match=name):
            DefenseParams(**{name: int(valid.high) + 1})


def test_parse_reads_every_parameter_in_its_type() -> None:
    parsed = DefenseParams.parse("base_variance=0.5, ensemble_size=3,noise_mode=keyed")
    assert parsed == DefenseParams(base_variance=0.5, ensemble_size=3, noise_mode="keyed")  # type: ignore[arg-type]
    assert DefenseParams.parse(None) == DefenseParams()
    with pytest.raises(InvalidParameters, match="unknown defense parameter"):
        DefenseParams.parse("sigma=1")
    with pytest.raises(InvalidParameters, match="must be a number"):
        DefenseParams.parse("temperature=hot")

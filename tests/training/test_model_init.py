"""model_init.py: `--config_overrides` parsing (building models is tested end to end in test_run_clm.py)."""

from __future__ import annotations

import pytest

from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.training.model_init import parse_config_overrides


def test_overrides_are_typed_yaml_scalars() -> None:
    text = "n_layer=4, n_embd=256,resid_pdrop=0.0,use_cache=false,n_inner=null,activation_function=gelu"
    assert parse_config_overrides(text) == {
        "n_layer": 4,
        "n_embd": 256,
        "resid_pdrop": 0.0,
        "use_cache": False,
        "n_inner": None,
        "activation_function": "gelu",
    }
    assert isinstance(parse_config_overrides("resid_pdrop=1")["resid_pdrop"], int)  # YAML's type, not coerced
    assert parse_config_overrides("n_inner=") == {"n_inner": None}


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_no_override(text: str) -> None:
    assert parse_config_overrides(text) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n_layer", r"'n_layer' is not key=value"),
        ("=4", r"'=4' is not key=value"),
        ("n_layers=4", r"unknown config field 'n_layers'"),
        ("n_layer=[4", r"cannot read the value of 'n_layer'"),
    ],
)
def test_bad_overrides_are_one_line(text: str, message: str) -> None:
    with pytest.raises(UserError, match=f"^--config_overrides: .*{message}"):
        parse_config_overrides(text)

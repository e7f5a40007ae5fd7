import pytest
from conftest import load_experiment
from helpers import step_flops


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_clip_formula_matches_xla(dtype):
    config = load_experiment("clip", "size=ti")
    config.model.dtype = dtype
    analytic, measured = step_flops(config, 4)
    assert analytic == pytest.approx(measured, rel=0.05)

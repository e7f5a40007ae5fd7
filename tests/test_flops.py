"""Each objective's analytic training FLOPs within 5% of XLA's cost analysis of the compiled step.

Sizes are wide enough that the elementwise work the formulas leave out (norms, GELU, softmax, adaLN
modulation) stays a few percent; at width 192 it reaches about 5-7%.
"""

import pytest
from helpers import step_flops


@pytest.mark.parametrize("objective, size, dtype, batch_size, overrides", [
    ("clip", "m", "float32", 4, {}),
    ("captioning", "m", "bfloat16", 4, {}),
    ("diffusion", "m", "float32", 16, {}),
    ("igpt", "nano", "float32", 4, {"data.image_size": 16, "igpt.palette_size": 512,
                                     "igpt.palette_fit_pixels": 20_000}),
])
def test_formula_matches_xla(tiny_config, objective, size, dtype, batch_size, overrides):
    config = tiny_config(objective, size=size, **{"model.dtype": dtype, **overrides})
    analytic, measured = step_flops(config, batch_size)
    assert analytic == pytest.approx(measured, rel=0.05)

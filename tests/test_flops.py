"""Each objective's analytic training FLOPs within 5% of XLA's cost analysis of the lowered train step.

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


def test_clip_text_compute_follows_the_caption_level():
    """At size s the text tower reads the level's caption length: short captions cost a fifth of the
    compute, not two thirds of it as when every caption was padded to 128 tokens."""
    from helpers import load_experiment

    from scaling.models.sizes import get_size
    from scaling.objectives.clip import Clip, train_flops

    def text_share(level: str) -> float:
        config = load_experiment("clip", "size=s")
        config.data.caption_level = level
        total = Clip(config).train_flops_per_example()
        image_only = train_flops(
            get_size("s"), get_size("s"), image_size=32, patch=4, text_len=0, embed_dim=384,
            batch_size=config.batch_size,
        )
        return 1 - image_only / total

    assert text_share("short") < 0.25 < 0.5 < text_share("medium") < text_share("descriptive")

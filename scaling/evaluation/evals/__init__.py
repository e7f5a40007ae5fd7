"""The registered evaluations (scaling.evaluation.registry), one module each; importing this package
registers them all.

- ``linear_probe``: the linear probe of every layer, its best layer and interval.
- ``fewshot``: ridge probes from k examples per class, per layer.
- ``pixel_floor``: the raw-pixel probe of the same examples, the floor features must clear.
- ``extra_labels``: ``eval.extra_labels`` probed on the same features, each over its own pixel floor.
- ``zero_shot``: an objective's class-score accuracy (zero-shot or generative classifier).
- ``caption_levels``: held-out caption metrics per ``eval.caption_levels``.
- ``val_loss``: the training loss on the validation split.
"""

from scaling.evaluation.evals import (  # noqa: F401  (each registers its evaluation)
    caption_levels,
    extra_labels,
    fewshot,
    linear_probe,
    pixel_floor,
    val_loss,
    zero_shot,
)

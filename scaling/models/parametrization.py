"""How a model's width sets its initialisation, its attention scale and its per-parameter learning rates.

``standard``: every matrix drawn with variance 1/fan_in, attention logits scaled by 1/sqrt(head dim), one
learning rate for all parameters. ``mup``, the maximal update parametrisation for Adam (Yang et al. 2022,
"Tensor Programs V", Table 3), stated relative to a base width at which it equals standard, so a learning
rate tuned at the base width (or any other) transfers to every width. With r = width / base width:

- input weights (patch, token and position embeddings, the timestep MLP's first layer), biases, norm
  gains and scalars: unchanged;
- hidden matrices (every projection that reads a width-sized input: attention, MLP, cross-attention's
  keys and values, adaLN modulation, tower-to-tower projections): learning rate x 1/r;
- readouts (a width-sized input to a fixed-size output: the logits and prediction heads): learning rate
  x 1/r and initial standard deviation x 1/sqrt(r);
- attention logits: scaled by sqrt(base head dim) / head dim instead of 1 / sqrt(head dim), the base head
  dim being base width / heads: µP's 1/d at a fixed head count, and standard at the base width. (The size
  ladder also adds heads as it widens, so a head's dim grows more slowly than the width.)

Layers ask for a ``Scaling`` per matrix; ``Dense`` applies its init factor and tags the parameter with its
learning-rate factor (``lr_scale`` metadata), which ``scaling.step.make_optimizer`` reads into a tree of
multipliers of the AdamW update.
"""

from __future__ import annotations

import dataclasses

import ml_collections

PARAMETRIZATIONS = ("standard", "mup")


@dataclasses.dataclass(frozen=True)
class Scaling:
    """Factors of one matrix: its initial standard deviation and its learning rate."""

    init: float = 1.0
    lr: float = 1.0


INPUT = Scaling()  # what standard gives every matrix, and µP input weights


@dataclasses.dataclass(frozen=True)
class Parametrization:
    kind: str = "standard"
    base_width: int = 32

    @classmethod
    def of(cls, model_config: ml_collections.ConfigDict) -> Parametrization:
        """The parametrisation a config's ``model`` section asks for."""
        return cls(model_config.parametrization, model_config.base_width)

    def ratio(self, width: int) -> float:
        """r: ``width`` over the base width under µP, 1 under standard."""
        return width / self.base_width if self.kind == "mup" else 1.0

    def hidden(self, in_width: int) -> Scaling:
        """A matrix from a width-sized input (of ``in_width``) to a width-sized output."""
        return Scaling(lr=1.0 / self.ratio(in_width))

    def readout(self, in_width: int) -> Scaling:
        """A matrix from a width-sized input to a fixed-size output (logits, predicted pixels)."""
        r = self.ratio(in_width)
        return Scaling(init=r**-0.5, lr=1.0 / r)

    def attention_scale(self, head_dim: int, width: int) -> float:
        """The factor of attention queries: 1/sqrt(head dim), times 1/sqrt(r) under µP, which is
        sqrt(base width / heads) / head dim."""
        return (head_dim * self.ratio(width)) ** -0.5


STANDARD = Parametrization()

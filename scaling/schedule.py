"""A run's schedule, decided by its config alone: the learning rate at every step, the eval milestones,
the cool-down branches a warmup-stable-decay run forks at them, and so the training compute it spends.

The trainer follows it, a sweep lists it before anything runs (``scaling sweep --dry-run``), and both
count compute the same way: ``total_steps`` main steps plus each branch's steps, at the objective's
analytic FLOPs per example times the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def warmup_steps(optim: ml_collections.ConfigDict, batch_size: int) -> int:
    """Steps of linear warmup: ``optim.warmup_examples`` in whole steps of ``batch_size`` (rounded up) when
    set, else ``optim.warmup_steps``. Counted in examples, a warmup stays the same length whatever the
    run's budget, so a short run is not mostly warmup."""
    return -(-optim.warmup_examples // batch_size) if optim.warmup_examples else optim.warmup_steps


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int, batch_size: int) -> optax.Schedule:
    """Linear warmup, then cosine decay or warmup-stable-decay (linear cool-down at the end)."""
    peak, warmup = optim.learning_rate, warmup_steps(optim, batch_size)
    final = final_rate(optim)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps, final)
    decay_steps = max(1, int(round(optim.decay_fraction * total_steps)))
    stable_steps = max(0, total_steps - warmup - decay_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.constant_schedule(peak),
            optax.linear_schedule(peak, final, decay_steps),
        ],
        boundaries=[warmup, warmup + stable_steps],
    )


def final_rate(optim: ml_collections.ConfigDict) -> float:
    """The learning rate a schedule (and every cool-down branch) ends at."""
    return optim.learning_rate * optim.final_lr_fraction


def learning_rates(optim: ml_collections.ConfigDict, total_steps: int, batch_size: int) -> np.ndarray:
    """The main run's learning rate at every step, float32 [total_steps]."""
    schedule = make_schedule(optim, total_steps, batch_size)
    return np.asarray(jax.vmap(schedule)(jnp.arange(total_steps)), np.float32)


def cooldown_rates(from_rate: float, final_rate: float, steps: int) -> np.ndarray:
    """A linear cool-down over ``steps`` steps from just below ``from_rate`` down to ``final_rate``."""
    return np.float32(from_rate + (final_rate - from_rate) * np.arange(1, steps + 1) / steps)


def milestone_steps(total_steps: int, num_points: int, first_fraction: float) -> tuple[int, ...]:
    """Steps at training-compute fractions spaced evenly in log space from first_fraction to 1."""
    if num_points <= 0:
        return ()
    fractions = np.geomspace(first_fraction, 1.0, num_points) if num_points > 1 else np.ones(1)
    return tuple(sorted({max(1, int(round(f * total_steps))) for f in fractions}))


def eval_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The steps a run evaluates at (``eval.num_points`` milestones)."""
    return milestone_steps(config.total_steps, config.eval.num_points, config.eval.first_fraction)


def cooldown_branches(config: ml_collections.ConfigDict) -> dict[int, int]:
    """{eval milestone step: cool-down steps} for the branches a run forks (WSD only; none at the end)."""
    fraction = config.eval.cooldown_fraction
    if config.optim.schedule != "wsd" or fraction <= 0:
        return {}
    return {step: max(1, round(fraction * step)) for step in eval_steps(config) if step < config.total_steps}


def branch_seed(seed: int, step: int) -> int:
    """The data-order seed of the cool-down branch forked at ``step`` (never the main run's)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class Compute:
    """Training FLOPs of a run: its main steps and its cool-down branches."""

    flops_per_step: float
    steps: int
    cooldown_steps: int

    @property
    def main(self) -> float:
        return self.steps * self.flops_per_step

    @property
    def cooldown(self) -> float:
        return self.cooldown_steps * self.flops_per_step

    @property
    def total(self) -> float:
        return self.main + self.cooldown


def run_compute(config: ml_collections.ConfigDict, flops_per_example: float) -> Compute:
    """The compute a run spends to its end, given its objective's FLOPs per example."""
    return Compute(flops_per_example * config.batch_size, config.total_steps,
                   sum(cooldown_branches(config).values()))

"""Caption detail on 2 CPU cores: the pod-sized ``sweeps/caption_detail.py`` at size mu, in about an hour.

    scaling sweep sweeps/caption_detail_cpu.py    # runs/caption_detail_cpu/
    scaling analyze runs/caption_detail_cpu       # report.md, caption_gain_by_noise, caption_mix_vs_compute

CLIP, captioning and caption-conditioned diffusion on the embedded scenes (32x32), each trained on short
captions only, descriptive captions only and the 95/5 descriptive/short mix, two seeds: 18 runs. Each is
one warmup-stable-decay run to 2e12 FLOPs whose eval at a quarter of it forks a cool-down branch, so every
run has two honest points (about 6e11 and 2e12 FLOPs). Every eval records, on 256 held-out scenes at
short and at descriptive captions, CLIP retrieval recall@1/5, the captioner's log-likelihood per token and
the diffusion model's loss per noise bucket with no caption, its own caption and another scene's; next to
the linear probe of the main shape (2,000 training and 1,000 test scenes) and CLIP's and the captioner's
zero-shot accuracy. Validation batches read short captions.

How it was sized: 18 runs of 2e12 FLOPs plus their cool-down branches, 3.78e13 training FLOPs in all
(``--dry-run``). Text is counted in the compute, so descriptive-caption runs take 241 to 319 steps of 64 and
short-only ones 1,549 to 1,899 (a short-only model sees six times the images). Steps of 64 at size mu,
timed here over 100 steps of ``scaling train`` while three other studies shared the 2 cores (load average
15 to 20): CLIP 0.75 s with descriptive captions and 0.14 s with short ones (8.4 and 7.7 GFLOP/s),
captioning 2.0 and 0.32 s (4.2 and 4.1), diffusion 1.9 and 0.30 s (3.3 and 3.7). At those rates the steps
alone would take about two hours; on 2 free cores mu steps run at 15 to 30 GFLOP/s (the scenes study,
``sweeps/scenes_objectives.py``), 21 to 42 minutes. The 54 evals (two main-run points and a cool-down
branch per run) took 3 to 60 s each in a tiny-budget run of this sweep under the same load, the first of a
run the longest (compilation, the raw-pixel probe), so about 10 to 15 minutes on free cores.
"""

from scaling.sweeps.spec import Budget, Sweep, grid, warmup_fraction

OBJECTIVES = ("clip", "captioning", "diffusion")
MIXES = ("short:1", "descriptive:1", "descriptive:0.95,short:0.05")
TOP_BUDGET = 2e12
SEEDS = (0, 1)
FIELDS = {
    "batch_size": 64,
    "checkpoint_every": 200,
    "log_every": 20,
    "optim.learning_rate": 1e-3,
    "optim.schedule": "wsd",
    "data.name": "scenes/32",
    "eval.num_points": 2,
    "eval.first_fraction": 0.25,
    "eval.probe_train_examples": 2000,
    "eval.probe_test_examples": 1000,
    "eval.caption_levels": ("short", "descriptive"),
    "eval.caption_examples": 256,
    "eval.caption_level": "short",
}
ZERO_SHOT = ("clip", "captioning")


def get_sweep() -> Sweep:
    runs = []
    for objective in OBJECTIVES:
        runs += grid([objective], ["mu"], [Budget.flops(TOP_BUDGET)], SEEDS,
                     fields={**FIELDS, "eval.zero_shot": objective in ZERO_SHOT},
                     axes={"data.caption_mix": MIXES}, adjust=warmup_fraction(0.02))
    return Sweep("caption_detail_cpu", runs)

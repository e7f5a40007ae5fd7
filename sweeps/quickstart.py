"""Quickstart study: every pre-training objective at size nano x two FLOP budgets on the embedded scenes.

    scaling sweep sweeps/quickstart.py   # runs/quickstart/: results.csv, compute_vs_probe.png, summary.json

Built to answer the question on 2 CPU cores, data build included: 8 runs, each probed
once, at the end of its cosine schedule (an honest point), for the main object's shape (8 classes) on
2,000 training and 2,000 test scenes, so each accuracy has a 95% bootstrap interval of about +/-2 points,
drawn over the raw-pixel probe of the same scenes. How it was chosen:

- Compute goes into training steps. The earlier quickstart (sizes mu and micro, 16 runs, two probes each)
  spent about 3% of its wall time in steps, most of it compiling, starting and evaluating. Width-128
  matmuls (size nano) at batch 64 keep the step near the float32 matmul peak; short captions ("a red
  circle", 20 tokens) keep text towers small next to the 64 image tokens; every objective reads the
  32-pixel build (iGPT resized to 16 pixels, its 256 pixel tokens), so the data set is built once.
- Evaluation is bounded: one probe point per run, no zero-shot (the diffusion classifier alone took
  35-73 s per eval), compiled steps and probe solvers shared through the persistent compilation cache.
- The label: raw pixels reach 0.158 on shape (2,000 train / 2,000 test) but 0.34 on object count (chance
  0.25); shape is what the short captions name and what pixels do not give away.
- Budgets 2e12 and 6e12 FLOPs, 3.2e13 in all. Measured on 2 idle cores (peak 206 GFLOP/s), cold data
  and compilation caches: 13 min 11 s, steps 62% of the wall at 0.32 of the peak, evaluation 25%,
  compilation 7%; CLIP 0.239 -> 0.261, captioning 0.221 -> 0.234, diffusion 0.187 -> 0.193 over raw
  pixels 0.175 (intervals +/-0.018); iGPT 0.13 below its 0.147; a supervised nano classifier at 6e12
  (benchmarks/probe_ceiling.py) 0.307.
"""

from scaling.sweeps.spec import Budget, Sweep, available_objectives, grid, warmup_fraction

SIZES = ("nano",)
BUDGETS = (Budget.flops(2e12), Budget.flops(6e12))
FIELDS = {
    "batch_size": 64,
    "checkpoint_every": 500,
    "log_every": 20,
    "optim.learning_rate": 1e-3,
    "data.name": "scenes/32",
    "data.caption_level": "short",
    "eval.num_points": 1,
    "eval.zero_shot": False,
    "eval.probe_train_examples": 2000,
    "eval.probe_test_examples": 2000,
}


def get_sweep() -> Sweep:
    runs = grid(available_objectives(), SIZES, BUDGETS, fields=FIELDS, adjust=warmup_fraction(0.1))
    return Sweep("quickstart", runs)

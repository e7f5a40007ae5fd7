"""Quickstart study: every registered objective at size nano x two FLOP budgets on the embedded scenes.

    scaling sweep sweeps/quickstart.py   # runs/quickstart/: results.csv, compute_vs_probe.png, summary.json

Built to answer the question on 2 CPU cores in about 12 minutes, data build included: 8 runs, one
linear probe each at the end of its cosine schedule (an honest point), the main object's shape (8 classes)
probed on 4,000 training and 2,000 test scenes so each accuracy has a +/-2 point 95% bootstrap interval,
drawn over the raw-pixel probe of the same scenes. How the numbers were chosen:

- Compute goes into training steps: width-128 matmuls (size nano) at batch 64 run the step near the
  machine's float32 matmul peak, where size mu and micro ran far below it; short captions ("a red
  circle", 20 tokens) keep the text towers small next to the 64 image tokens; every objective reads the
  32-pixel build (iGPT at 16 pixels, resized), so the data set is built once.
- Evaluation is bounded: one eval per run, no zero-shot (the diffusion classifier alone cost 35-73 s
  per eval), compiled steps and probe solvers shared through the persistent compilation cache.
- Budgets 3e12 and 1e13 FLOPs: ... (measured; see the sweep's summary.json).
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

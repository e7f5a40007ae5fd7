"""Pod scale: every objective at 0.3B to 1.8B parameters, ViT-style 224-pixel images with 16-pixel
patches (iGPT at its 32x32 raster), batch 1024, bfloat16, scanned layers. Plan it before renting the
slice:

    scaling plan sweeps/pod_scale.py --topology v5p-64   # per-chip memory, mesh, chip-hours per run

The planner picks each run's mesh and, where activations do not fit, a remat policy.
"""

from scaling.sweeps.spec import Budget, Sweep, grid, warmup_fraction

SIZES = ("l", "g", "G")  # 0.30B, 1.0B, 1.8B parameters per tower
BUDGETS = (Budget.flops(1e21),)
FIELDS = {
    "batch_size": 1024,
    "checkpoint_every": 1000,
    "log_every": 100,
    "model.dtype": "bfloat16",
    "model.scan_layers": True,
    "optim.schedule": "wsd",
    "data.max_caption_len": 64,
    "eval.num_points": 6,
}
IMAGES = {"data.image_size": 224, "model.patch_size": 16}
PIXELS = {"data.image_size": 32}  # iGPT models the raster: 1024 tokens, one a pixel


def get_sweep() -> Sweep:
    warmup = warmup_fraction(0.02, at_most=5000)
    runs = grid(("clip", "captioning", "diffusion"), SIZES, BUDGETS, fields={**FIELDS, **IMAGES},
                adjust=warmup)
    runs += grid(("igpt",), SIZES, BUDGETS, fields={**FIELDS, **PIXELS}, adjust=warmup)
    return Sweep("pod_scale", runs)

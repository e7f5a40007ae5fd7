import pytest
from helpers import ROOT, load_experiment, scaling

from scaling.errors import ConfigError
from scaling.objectives import validate_config


@pytest.mark.parametrize("field, value, message", [
    ("objective", "mae", "objective: unknown 'mae'; choose one of clip"),
    ("size", "huge", "size: unknown 'huge'"),
    ("batch_size", 12, "batch_size: 12 is not divisible by the 8 batch shards .*multiple of 8"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.residual_dtype", "float16", r"model.residual_dtype: .float16. not in \(.float32., .bfloat16.\)"),
    ("model.parametrization", "mu-p", "model.parametrization: unknown 'mu-p'; choose one of standard, mup"),
    ("model.base_width", 64, r"model.base_width: 64 must be positive and at most the width of size mu \(32"),
    ("model.patch_size", 5, "does not divide data.image_size"),
    ("data.caption_level", "none", "CLIP needs captions"),
    ("mesh.data", 3, "multiply to 3 but there are 8 devices; set one axis to -1"),
    ("optim.warmup_steps", 10_000, "must be below total_steps"),
    ("eval.zero_shot_points", "last", r"eval.zero_shot_points: 'last' not in \('all', 'final'\)"),
    ("eval.zero_shot_examples", -1, "eval.zero_shot_examples: -1 must be 0"),
    ("optim.warmup_examples", 640, "optim.warmup_examples: 640 and optim.warmup_steps: 30 both set a warmup"),
])
def test_validation_names_the_field(field, value, message):
    config = load_experiment("clip")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config, num_devices=8)


def test_config_argument_must_be_known():
    with pytest.raises(ConfigError, match="only size=... is taken here"):
        load_experiment("clip", "size=mu,width=3")


@pytest.mark.devices(8)
def test_cli_reports_a_batch_the_devices_cannot_split_before_compiling(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "run"
    assert scaling("train", "--config", "experiments/clip.py:size=mu", "--workdir", workdir,
                   "--config.batch_size=12", "--config.mesh.data=8", "--config.mesh.fsdp=1",
                   "--config.mesh.tensor=1") == 2
    assert "error: batch_size: 12 is not divisible by the 8 batch shards" in capsys.readouterr().err
    assert not (workdir / "checkpoints").exists()

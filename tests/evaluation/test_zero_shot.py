import jax
import numpy as np
import pytest
from helpers import load_experiment, random_batch, run_steps

from scaling.data import cifar10_jpeg
from scaling.data.captions import TEMPLATES, class_prompts, prompt_templates
from scaling.data.tokenizer import get_tokenizer
from scaling.evaluation.evals.zero_shot import PREDICTION
from scaling.evaluation.evaluator import evaluate, prepare_evaluation
from scaling.evaluation.features import map_split
from scaling.objectives import build_objective
from scaling.sharding import make_mesh
from scaling.state import build_model_state

CLASSES = ("circle", "square", "triangle", "star")
ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}


def overfit_then_score(config, batch, steps: int) -> np.ndarray:
    """Zero-shot scores [B, C] of CLASSES for the batch's images after ``steps`` steps on the batch."""
    config.mesh.update(ONE_DEVICE)
    devices = jax.devices()[:1]
    trained = run_steps(config, batch, devices, ONE_DEVICE, steps)
    assert trained["losses"][-1] < 0.5 * trained["losses"][0]
    mesh = make_mesh(config.mesh, devices)
    with jax.set_mesh(mesh):
        model = build_model_state(config, mesh).model(trained["params"])
        scores = build_objective(config).zero_shot_scores(model, batch["image"], CLASSES, jax.random.key(1))
    assert scores.shape == (batch["image"].shape[0], len(CLASSES))
    return np.asarray(scores)


def test_prompts_are_class_major_over_templates():
    prompts = class_prompts(("sea_lion", "cat"))
    assert len(prompts) == 2 * len(TEMPLATES)
    assert prompts[0] == TEMPLATES[0].format("sea lion")
    assert prompts[len(TEMPLATES)] == TEMPLATES[0].format("cat")


def test_prompts_for_templated_captions_are_the_captions_the_data_set_writes():
    names = cifar10_jpeg.CLASS_NAMES
    written = {cifar10_jpeg.class_caption(f"train/{name}/{i:04d}.jpg", name)
               for name in names for i in range(100)}
    assert set(class_prompts(names, prompt_templates("cifar10_jpeg"))) == written
    assert prompt_templates("scenes") == TEMPLATES


@pytest.mark.parametrize("objective, steps", [("clip", 120), ("captioning", 60)])
def test_zero_shot_picks_the_class_whose_prompt_was_the_training_caption(objective, steps):
    config = load_experiment(objective)
    config.data.max_caption_len = 32
    config.optim.update(learning_rate=3e-3, warmup_steps=2)
    batch = random_batch(config, 16)
    labels = np.arange(16) % len(CLASSES)
    captions = [TEMPLATES[0].format(CLASSES[label]) for label in labels]
    tokens, mask = get_tokenizer("byte").encode_batch(captions, config.data.max_caption_len)
    batch.update(label=labels.astype(np.int32), caption_tokens=np.asarray(tokens, np.int32),
                 caption_mask=np.asarray(mask, np.int32))
    scores = overfit_then_score(config, batch, steps)
    assert np.mean(scores.argmax(axis=1) == labels) >= 0.8  # chance is 0.25


def test_diffusion_classifier_picks_the_class_the_model_was_conditioned_on():
    config = load_experiment("diffusion")
    config.diffusion.update(condition="label", num_classes=len(CLASSES), zero_shot_keep=2,
                            zero_shot_trials=32, zero_shot_extra_trials=64)
    config.optim.update(learning_rate=3e-3, warmup_steps=2)
    batch = random_batch(config, 16)
    labels = np.arange(16) % len(CLASSES)
    colours = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)
    noise = np.random.default_rng(0).integers(-20, 20, batch["image"].shape)
    batch["image"] = np.clip(colours[labels][:, None, None] + noise, 0, 255).astype(np.uint8)
    batch["label"] = labels.astype(np.int32)
    scores = overfit_then_score(config, batch, 250)
    assert (np.isfinite(scores).sum(axis=1) == 2).all()  # only the kept classes are scored fully
    assert np.mean(scores.argmax(axis=1) == labels) >= 0.75  # chance is 0.25


def test_zero_shot_examples_scores_the_first_probe_test_examples_in_a_pass_of_its_own(tiny_config):
    config = tiny_config("clip", **{"eval.zero_shot_examples": 100, "eval.probe_train_examples": 100,
                                    "eval.probe_test_examples": 200})
    config.mesh.update(ONE_DEVICE)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        state = build_model_state(config, mesh)
        params = jax.jit(lambda: state.init_params(0), out_shardings=state.param_shardings)()
        evaluation = prepare_evaluation(config, state, point="checkpoint")
        evaluated = evaluate(evaluation, params, max_train=100, max_test=200)
        zero_shot = next(kind for kind in evaluation.evals if kind.name == "zero_shot")
        test_images = evaluation.setup.images.batches("test", 200)
        outputs, labels = map_split(zero_shot.predict_fn, params, test_images, mesh=mesh,
                                    batch_size=config.eval.batch_size, seed=config.seed)
    assert evaluated.test_examples == 200  # the probe's test examples are all there
    assert evaluated.record["zero_shot_accuracy"] == np.mean(outputs[PREDICTION][:100] == labels[:100])
    assert evaluated.seconds["zero_shot"] > 0

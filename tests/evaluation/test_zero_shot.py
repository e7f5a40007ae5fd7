import jax
import numpy as np
import pytest
from helpers import ONE_DEVICE, SHAPES, load_experiment, overfit, random_batch, shape_caption_batch

from scaling.data import cifar10_jpeg
from scaling.data.captions import TEMPLATES, class_prompts, prompt_templates
from scaling.evaluation.evals.zero_shot import PREDICTION
from scaling.evaluation.evaluator import evaluate, prepare_evaluation
from scaling.evaluation.features import map_split
from scaling.sharding import make_mesh
from scaling.state import build_model_state


def zero_shot_scores(trained) -> np.ndarray:
    """Zero-shot scores [B, K] of SHAPES for the images of the batch a model was overfit on (helpers.overfit),
    jitted as the evaluator's."""
    state = trained["state"]
    score = lambda params, images: state.objective.zero_shot_scores(
        state.model(params), images, SHAPES, jax.random.key(1))
    with jax.set_mesh(state.mesh):
        scores = np.asarray(jax.jit(score)(trained["params"], trained["batch"]["image"]))
    assert trained["losses"][-1] < 0.5 * trained["losses"][0]
    assert scores.shape == (16, len(SHAPES))
    return scores


def accuracy(scores, batch) -> float:
    return float(np.mean(scores.argmax(axis=1) == batch["label"]))


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


def test_clip_zero_shot_picks_the_class_whose_prompt_was_the_training_caption():
    config = load_experiment("clip")
    config.data.max_caption_len = 32
    config.optim.update(learning_rate=3e-3, warmup_steps=2)
    trained = overfit(config, shape_caption_batch(config), 120)
    assert accuracy(zero_shot_scores(trained), trained["batch"]) >= 0.8  # chance is 0.25


@pytest.mark.xdist_group("overfit_captioner")
def test_captioner_zero_shot_picks_the_class_whose_prompt_was_the_training_caption(overfit_captioner):
    assert accuracy(zero_shot_scores(overfit_captioner), overfit_captioner["batch"]) >= 0.8


def test_diffusion_classifier_picks_the_class_the_model_was_conditioned_on():
    config = load_experiment("diffusion")
    config.diffusion.update(condition="label", num_classes=len(SHAPES), zero_shot_keep=2,
                            zero_shot_trials=32, zero_shot_extra_trials=64)
    config.optim.update(learning_rate=3e-3, warmup_steps=2)
    batch = random_batch(config, 16)
    labels = np.arange(16) % len(SHAPES)
    colours = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)
    noise = np.random.default_rng(0).integers(-20, 20, batch["image"].shape)
    batch["image"] = np.clip(colours[labels][:, None, None] + noise, 0, 255).astype(np.uint8)
    batch["label"] = labels.astype(np.int32)
    scores = zero_shot_scores(overfit(config, batch, 250))
    assert (np.isfinite(scores).sum(axis=1) == 2).all()  # only the kept classes are scored fully
    assert accuracy(scores, batch) >= 0.75  # chance is 0.25


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

"""Tests for the probes (scaling.evaluation: logistic, linear_probe, fewshot): sklearn agreement, C selection,
few-shot ridge, errors."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from scaling.evaluation import fewshot, logistic
from scaling.evaluation import linear_probe as lp
from scaling.evaluation.evals.fewshot import fewshot_fields
from scaling.evaluation.evals.linear_probe import chosen_probe, linear_probe_fields
from scaling.evaluation.logistic import SolverOptions


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    order = np.random.default_rng(0).permutation(data.target.size)
    x_ND = data.data.astype(np.float32)[order]
    y_N = data.target[order]
    return x_ND[:1200], y_N[:1200], x_ND[1200:], y_N[1200:]


@pytest.fixture(scope="module")
def blobs():
    x_ND, y_N = make_classification(
        n_samples=2500,
        n_features=64,
        n_informative=20,
        n_redundant=10,
        n_classes=10,
        n_clusters_per_class=1,
        flip_y=0.05,
        random_state=0,
    )
    x_ND = x_ND.astype(np.float32) * 3.0 + 5.0
    return x_ND[:2000], y_N[:2000], x_ND[2000:], y_N[2000:]


def _sklearn_probe(x_train, y_train, C, tol=1e-6):
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=C, tol=tol, max_iter=10_000)
    return scaler, model.fit(scaler.transform(x_train).astype(np.float64), y_train)


@pytest.mark.parametrize(("dataset", "C"), [("digits", 1e-2), ("digits", 1.0), ("blobs", 0.1)])
def test_fit_matches_sklearn(dataset, C, request):
    x_train, y_train, x_test, y_test = request.getfixturevalue(dataset)
    scaler, model = _sklearn_probe(x_train, y_train, C)
    probe = logistic.fit_logistic(x_train, y_train, C, solver=SolverOptions(tol=1e-6))

    z_test = scaler.transform(x_test)
    ours = logistic.probe_accuracy(probe, x_test, y_test)
    assert abs(ours - model.score(z_test, y_test)) <= 0.005
    np.testing.assert_allclose(logistic.predict_proba(probe, x_test), model.predict_proba(z_test), atol=1e-2)
    weights_KD = np.asarray(probe.weights).T
    assert np.linalg.norm(weights_KD - model.coef_) <= 1e-2 * np.linalg.norm(model.coef_)
    bias_K = np.asarray(probe.bias)
    np.testing.assert_allclose(bias_K - bias_K.mean(), model.intercept_ - model.intercept_.mean(), atol=2e-2)
    assert float(probe.grad_max_abs) <= 1e-6


def test_preconditioning_changes_iterations_not_the_solution(blobs):
    x_train, y_train, _, _ = blobs
    fast = logistic.fit_logistic(x_train, y_train, 1.0, solver=SolverOptions(tol=1e-6))
    plain = logistic.fit_logistic(x_train, y_train, 1.0, solver=SolverOptions(tol=1e-6, precondition=False))
    np.testing.assert_allclose(fast.weights, plain.weights, atol=2e-3, rtol=1e-2)
    assert int(fast.iterations) < int(plain.iterations)


def test_protocol_matches_sklearn_protocol(blobs):
    x_train, y_train, x_test, y_test = blobs
    c_grid = (1e-4, 1e-2, 1.0)
    result = lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=c_grid, refine_steps=0, seed=3)

    fit_rows, val_rows = lp.stratified_holdout(y_train, 0.2, seed=3)
    val_accuracy = {}
    for C in c_grid:
        scaler, model = _sklearn_probe(x_train[fit_rows], y_train[fit_rows], C, tol=1e-4)
        val_accuracy[C] = model.score(scaler.transform(x_train[val_rows]), y_train[val_rows])
    best_C = max(c_grid, key=lambda C: (val_accuracy[C], -C))
    scaler, model = _sklearn_probe(x_train, y_train, best_C, tol=1e-4)

    assert result["best_C"] == best_C
    for C in c_grid:
        assert abs(result["val_accuracy_per_C"][format(C, "g")] - val_accuracy[C]) <= 0.005
    assert abs(result["test_accuracy"] - model.score(scaler.transform(x_test), y_test)) <= 0.005


def test_result_is_plain_json(blobs):
    x_train, y_train, x_test, y_test = blobs
    result = lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=(1e-3, 1e-1), refine_steps=0)
    assert json.loads(json.dumps(result)) == result
    assert type(result["test_accuracy"]) is float
    assert type(result["best_C"]) is float
    assert result["num_fit"] + result["num_val"] == result["num_refit"] == 2000
    assert set(result["val_accuracy_per_C"]) == {"0.001", "0.1"}


def test_fine_search_between_decades_improves_on_the_best_grid_value(blobs):
    x_train, y_train, x_test, y_test = blobs
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    coarse = lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=grid, refine_steps=0)
    fine = lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=grid)
    tried = {float(C) for C in fine["val_accuracy_per_C"]}
    assert len(tried) == len(grid) + 6 and set(grid) <= tried
    assert fine["val_accuracy"] >= coarse["val_accuracy"]
    assert fine["val_accuracy_per_C"][format(coarse["best_C"], "g")] == coarse["val_accuracy"]
    neighbours = [C for C in tried - set(grid) if coarse["best_C"] / 10 < C < coarse["best_C"] * 10]
    assert len(neighbours) == 6  # three a quarter decade apart on each side of the best grid value


def test_best_c_on_the_grid_edge_warns_with_the_fix():
    x_train, y_train = _strong_shared_noise_problem(2000, seed=0)
    x_test, y_test = _strong_shared_noise_problem(500, seed=1)
    with pytest.warns(UserWarning, match=r"best C \(0.01\) is the largest value .* extend c_grid above"):
        result = lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=(1e-4, 1e-3, 1e-2))
    assert result["best_C_on_edge"]


def test_sweep_compiles_the_solver_once_per_shape(blobs):
    x_train, y_train, x_test, y_test = blobs
    lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=(1e-3, 1e-1))
    compiled = logistic._solve._cache_size()
    lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=(1e-4, 1e-2, 0.3, 3.0))
    assert logistic._solve._cache_size() == compiled


def _balanced_labels(num_examples, rng):
    return rng.permutation(np.arange(num_examples) % 10)


def _strong_shared_noise_problem(num_examples, seed):
    """Class k shifts feature k by 1, hidden under large noise in 3 directions shared by all
    features: a weakly penalised probe learns to cancel the noise, a strongly penalised one
    is close to a nearest-centroid rule and cannot."""
    rng = np.random.default_rng(seed)
    y_N = _balanced_labels(num_examples, rng)
    means_KD = np.zeros((10, 64))
    means_KD[:, :10] = np.eye(10)
    mixing_3D = np.random.default_rng(99).normal(size=(3, 64))
    noise_ND = (
        0.15 * rng.normal(size=(num_examples, 64)) + 4.0 * rng.normal(size=(num_examples, 3)) @ mixing_3D
    )
    return (means_KD[y_N] + noise_ND).astype(np.float32), y_N


def _isotropic_problem(num_examples, seed):
    """Overlapping spherical Gaussian classes: with few examples an unpenalised probe overfits."""
    rng = np.random.default_rng(seed)
    y_N = _balanced_labels(num_examples, rng)
    means_KD = 0.35 * np.random.default_rng(98).normal(size=(10, 64))
    return (means_KD[y_N] + rng.normal(size=(num_examples, 64))).astype(np.float32), y_N


def test_selection_prefers_weak_penalty_on_easy_data():
    x_train, y_train = _strong_shared_noise_problem(2000, seed=0)
    x_test, y_test = _strong_shared_noise_problem(500, seed=1)
    result = lp.select_and_evaluate(x_train, y_train, x_test, y_test)
    assert result["best_C"] >= 1.0
    assert result["test_accuracy"] > 0.95
    assert result["val_accuracy_per_C"]["0.001"] < 0.5


def test_selection_prefers_strong_penalty_when_overfitting_hurts():
    x_pool, y_pool = _isotropic_problem(2000, seed=0)
    x_test, y_test = _isotropic_problem(500, seed=1)
    train_rows = np.concatenate([np.flatnonzero(y_pool == k)[:6] for k in range(10)])
    val_rows = np.setdiff1d(np.arange(y_pool.size), train_rows)
    result = lp.select_and_evaluate(
        x_pool[train_rows], y_pool[train_rows], x_test, y_test, x_val=x_pool[val_rows], y_val=y_pool[val_rows]
    )
    assert result["best_C"] < 0.03  # 1e-2 on the grid, refined to a quarter decade above it
    assert result["val_accuracy_per_C"]["100"] < result["val_accuracy"] - 0.05


def test_refit_uses_train_and_validation(blobs):
    x_pool, y_pool, x_test, y_test = blobs
    train_rows = np.concatenate([np.flatnonzero(y_pool == k)[:6] for k in range(10)])
    val_rows = np.setdiff1d(np.arange(y_pool.size), train_rows)
    result = lp.select_and_evaluate(
        x_pool[train_rows],
        y_pool[train_rows],
        x_test,
        y_test,
        x_val=x_pool[val_rows],
        y_val=y_pool[val_rows],
        c_grid=(1e-3, 1e-1),
    )
    assert result["num_fit"] == 60 and result["num_refit"] == 2000
    refit = logistic.fit_logistic(
        np.concatenate([x_pool[train_rows], x_pool[val_rows]]),
        np.concatenate([y_pool[train_rows], y_pool[val_rows]]),
        result["best_C"],
    )
    assert abs(result["test_accuracy"] - logistic.probe_accuracy(refit, x_test, y_test)) <= 0.002
    assert result["test_accuracy"] > result["val_accuracy"] + 0.05


def test_standardisation_uses_training_statistics_only(blobs):
    x_train, y_train, x_test, y_test = blobs
    probe = logistic.fit_logistic(x_train, y_train, 0.1)
    np.testing.assert_allclose(probe.mean, x_train.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probe.scale, x_train.std(axis=0), rtol=1e-4)

    c_grid = (1e-2, 1.0)
    base = lp.select_and_evaluate(x_train, y_train, x_test, y_test, c_grid=c_grid)
    shifted = lp.select_and_evaluate(
        x_train, y_train, x_test + 10 * x_train.std(axis=0), y_test, c_grid=c_grid
    )
    assert shifted["test_accuracy"] < base["test_accuracy"] - 0.2

    gain_D = np.linspace(0.1, 10.0, x_train.shape[1]).astype(np.float32)
    rescaled = lp.select_and_evaluate(
        x_train * gain_D - 3.0, y_train, x_test * gain_D - 3.0, y_test, c_grid=c_grid
    )
    assert rescaled["best_C"] == base["best_C"]
    assert abs(rescaled["test_accuracy"] - base["test_accuracy"]) <= 0.002


def test_probe_layers_picks_the_informative_layer(blobs):
    x_train, y_train, x_test, y_test = blobs
    rng = np.random.default_rng(0)
    train = {"noise": rng.normal(size=x_train.shape).astype(np.float32), "signal": x_train}
    test = {"noise": rng.normal(size=x_test.shape).astype(np.float32), "signal": x_test}
    result = lp.probe_layers(train, y_train, test, y_test, c_grid=(1e-2, 1.0))
    assert result["best_layer"] == "signal"
    assert result["best_test_accuracy"] == result["per_layer"]["signal"]["test_accuracy"]
    assert result["per_layer"]["noise"]["test_accuracy"] < 0.2
    assert json.loads(json.dumps(result)) == result


def test_fewshot_accuracy_rises_with_shots(digits):
    x_train, y_train, x_test, y_test = digits
    result = fewshot.fewshot_ridge(x_train, y_train, x_test, y_test, shots=(1, 5, 25))
    means = [result["shots"][k]["mean_accuracy"] for k in ("1", "5", "25")]
    assert means[0] < means[1] < means[2]
    assert means[0] > 0.3 and means[2] > 0.85
    assert len(result["shots"]["5"]["accuracy_per_seed"]) == 3
    assert json.loads(json.dumps(result)) == result


def _numpy_ridge(x_nD, labels_n, num_classes, l2):
    targets_nK = np.eye(num_classes)[labels_n]
    x_mean_D, target_mean_K = x_nD.mean(axis=0), targets_nK.mean(axis=0)
    centred_nD = x_nD - x_mean_D
    gram_DD = centred_nD.T @ centred_nD + l2 * np.eye(x_nD.shape[1])
    w_DK = np.linalg.solve(gram_DD, centred_nD.T @ (targets_nK - target_mean_K))
    return w_DK, target_mean_K - x_mean_D @ w_DK


@pytest.mark.parametrize("shots", [2, 10])
def test_fewshot_matches_numpy_closed_form(digits, shots):
    x_train, y_train, x_test, y_test = digits
    l2 = 64.0
    result = fewshot.fewshot_ridge(x_train, y_train, x_test, y_test, shots=(shots,), seeds=(4,), l2=l2)

    rows = fewshot.fewshot_indices(y_train, shots, seed=4)
    scaler = StandardScaler().fit(x_train[rows].astype(np.float64))  # statistics of the k-shot draw
    z_train, z_test = scaler.transform(x_train[rows]), scaler.transform(x_test)
    w_DK, b_K = _numpy_ridge(z_train, y_train[rows], 10, l2)
    expected = np.mean(np.argmax(z_test @ w_DK + b_K, axis=1) == y_test)
    assert abs(result["shots"][str(shots)]["mean_accuracy"] - expected) <= 0.002

    ours_w, ours_b = fewshot.fit_ridge(z_train.astype(np.float32), np.eye(10)[y_train[rows]], l2)
    np.testing.assert_allclose(ours_w, w_DK, atol=1e-4)
    np.testing.assert_allclose(ours_b, b_K, atol=1e-4)


def test_fewshot_reads_only_the_drawn_examples_of_the_training_pool(digits):
    x_train, y_train, x_test, y_test = digits
    result = fewshot.fewshot_ridge(x_train, y_train, x_test, y_test, shots=(5,), seeds=(3,))
    undrawn = np.setdiff1d(np.arange(len(y_train)), fewshot.fewshot_indices(y_train, 5, seed=3))
    shifted = x_train.copy()
    shifted[undrawn] = 10.0 * shifted[undrawn] + 7.0  # changes the pool's mean and spread
    again = fewshot.fewshot_ridge(shifted, y_train, x_test, y_test, shots=(5,), seeds=(3,))
    assert again["shots"]["5"]["mean_accuracy"] == result["shots"]["5"]["mean_accuracy"]


def test_fewshot_draws_are_balanced_and_deterministic(digits):
    _, y_train, _, _ = digits
    rows = fewshot.fewshot_indices(y_train, 5, seed=1)
    assert np.array_equal(np.bincount(y_train[rows]), np.full(10, 5))
    assert np.array_equal(rows, fewshot.fewshot_indices(y_train, 5, seed=1))
    assert not np.array_equal(rows, fewshot.fewshot_indices(y_train, 5, seed=2))


def test_mismatched_feature_dimensions():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="x_test has feature dimension 3 but x_train has 4"):
        lp.select_and_evaluate(x, np.arange(10) % 2, np.zeros((5, 3)), np.zeros(5))


def test_mismatched_label_count():
    with pytest.raises(ValueError, match="y_train has 9 labels but x_train has 10 rows"):
        lp.select_and_evaluate(np.zeros((10, 4)), np.zeros(9), np.zeros((5, 4)), np.zeros(5))


def test_features_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"2-D array \[num_examples, feature_dim\]"):
        logistic.fit_logistic(np.zeros((10, 4, 4)), np.arange(10) % 2)


def test_one_hot_labels_are_rejected():
    with pytest.raises(ValueError, match="not one-hot"):
        logistic.fit_logistic(np.zeros((10, 4)), np.eye(10))


def test_fewer_than_two_classes():
    x = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="at least 2"):
        lp.select_and_evaluate(x, np.zeros(20, int), x, np.zeros(20, int))
    with pytest.raises(ValueError, match="at least 2"):
        fewshot.fewshot_ridge(x, np.ones(20, int), x, np.ones(20, int))


def test_nan_features_are_reported():
    x = np.random.default_rng(0).normal(size=(20, 4))
    x[[3, 7], 1] = np.nan
    with pytest.raises(ValueError, match=r"x_test contains NaN .* 2 of 20 rows .*\[3, 7\]"):
        lp.select_and_evaluate(np.ones_like(x), np.arange(20) % 2, x, np.arange(20) % 2)


def test_too_few_examples_for_a_fewshot_draw():
    x = np.random.default_rng(0).normal(size=(30, 4))
    y = np.array([0] * 20 + [1] * 7 + [2] * 3)
    with pytest.raises(ValueError, match=r"10-shot draw .*\(class 2 has 3\)"):
        fewshot.fewshot_ridge(x, y, x, y, shots=(1, 10))


def test_validation_features_without_labels():
    x = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="both x_val and y_val"):
        lp.select_and_evaluate(x, np.arange(20) % 2, x, np.arange(20) % 2, x_val=x)


def test_bad_c_grid():
    x = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="positive, finite"):
        lp.select_and_evaluate(x, np.arange(20) % 2, x, np.arange(20) % 2, c_grid=(1.0, -1.0))


def test_layer_names_must_match():
    x = np.random.default_rng(0).normal(size=(20, 4))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        lp.probe_layers({"a": x, "b": x}, y, {"a": x}, y)


def test_probe_fields_report_fewshot_per_layer_without_the_full_label_best_layer(digits):
    x_train, y_train, x_test, y_test = digits
    noise = np.random.default_rng(0)
    train = ({"pixels": x_train, "noise": noise.normal(size=x_train.shape).astype(np.float32)}, y_train)
    test = ({"pixels": x_test, "noise": noise.normal(size=x_test.shape).astype(np.float32)}, y_test)
    record = {**linear_probe_fields(train, test), **fewshot_fields(train, test, shots=(5,))}
    assert record["probe_layer"] == "pixels" and "probe_timestep" not in record
    assert 1e-6 <= record["probe_C"] <= 1e2  # what validation chose, within the grid
    assert record["probe_val_accuracy"] > 0.7
    assert not any(key.startswith("fewshot") and "/" not in key for key in record)
    assert record["fewshot_5shot/pixels"] > 0.7 > 0.2 > record["fewshot_5shot/noise"]


def test_the_record_names_the_timestep_of_a_chosen_diffusion_layer():
    probes = {"best_layer": "layer_02/t30", "best_val_accuracy": 0.6,
              "per_layer": {"layer_02/t30": {"best_C": 0.01}}}
    assert chosen_probe(probes) == {"probe_layer": "layer_02/t30", "probe_timestep": 30, "probe_C": 0.01,
                                    "probe_val_accuracy": 0.6}

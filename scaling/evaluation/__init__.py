"""Evaluation of frozen models, one idea per module.

- ``features``: one jitted pass over a data split (pooled features per layer, or any batch function).
- ``probe_inputs``: input checks and standardisation shared by the probes.
- ``logistic``: L2 logistic regression by preconditioned L-BFGS (``SolverOptions``).
- ``linear_probe``: the C-selection protocol (validation split, coarse-to-fine C, refit, one test score).
- ``fewshot``: closed-form ridge probes from k examples per class.
- ``pixel_reference``: the raw-pixel probe a model's features must beat, cached.
- ``zero_shot``: which objectives score classes and the jitted predictor.
- ``caption_levels``: held-out caption metrics per caption level.
- ``registry``: the one interface of an evaluation, the registry by name, ``eval.evals``.
- ``evals``: the registered evaluations, one module each.
- ``evaluator``: the one ``evaluate()`` over them and the trainer's ``Evaluator``.
- ``probe``: ``scaling probe`` on a run's latest checkpoint.
"""

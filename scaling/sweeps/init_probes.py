"""Init probes for a study whose runs predate them, re-created from its sweep definition.

A run's step 0 needs only its config: the objective's initialisation with the run's seed. For every run of
a results table this re-creates those parameters from the sweep file, probes them with the run's own
protocol (``scaling.evaluation.init_probe``: cached per initialisation, so runs sharing one share the
probe) and appends one ``init`` eval row per run to ``init_probes.csv`` beside ``results.csv``, which the
analysis reads with it. Rows are written as each probe finishes and a rerun skips the runs already there,
so the command can be stopped and resumed at any point (``--cached`` writes only the probes already
cached, e.g. by other processes, and computes none)::

    python -m scaling.sweeps.init_probes sweeps/cifar10_objectives.py docs/results/cifar10_objectives

Runs are matched to the sweep by id, else (for a sweep edited since) by objective, size, seed, budget and
training captions; ``--set field=value`` overrides a config field of every re-created run whose config has
its section, to restore a protocol the sweep file has changed since (e.g. ``--set
diffusion.feature_timesteps=(100,)``, the one noise level diffusion was once probed at).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import pandas as pd

from scaling.config import get_field, parse_value, set_field
from scaling.errors import ConfigError
from scaling.evaluation.init_probe import cached_init_probe, init_probe
from scaling.sharding import make_mesh
from scaling.state import build_model_state
from scaling.sweeps.results import INIT_NAME, RESULTS_NAME, RUN_COLUMNS, config_captions, read_table
from scaling.sweeps.spec import RunSpec, load_sweep
from scaling.workdir import INIT, flatten, write_atomic

MATCH = ("objective", "size", "seed", "budget", "captions")


def _match_key(values) -> tuple[str, ...]:
    return tuple(str(values[column]) for column in MATCH)


def matched_runs(sweep_file: str, table: pd.DataFrame) -> list[tuple[pd.Series, RunSpec]]:
    """(the run's columns in the table, its spec) for every run of the table, the first seed's runs first
    (they carry the longest runs); ConfigError for a run the sweep does not define."""
    runs = load_sweep(sweep_file).runs
    by_id = {run.run_id: run for run in runs}
    by_key = {}
    for run in runs:
        captions = config_captions(flatten(run.config.to_dict()))
        by_key[_match_key({"objective": run.config.objective, "size": run.config.size,
                           "seed": run.config.seed, "budget": run.budget.label, "captions": captions})] = run
    pairs = []
    for _, row in table.drop_duplicates("run_id").sort_values(["seed", "run_id"]).iterrows():  # seed 0 first
        captions = row.get("captions")  # tables written before the column name the caption level only
        captions = captions if pd.notna(captions) else row["caption_level"]
        run = by_id.get(row["run_id"]) or by_key.get(_match_key({**row.to_dict(), "captions": captions}))
        if run is None:
            raise ConfigError(f"run {row['run_id']} of the table is not in {sweep_file}; give the sweep file "
                              "the study was run from")
        pairs.append((row, run))
    return pairs


def probe_init(run: RunSpec, overrides: dict[str, str], cached_only: bool = False) -> dict | None:
    """The init probe's fields of ``run``, its parameters re-created at step 0 (with ``cached_only``, the
    cached probe or None)."""
    config = run.config.copy_and_resolve_references()
    for field, text in overrides.items():
        if field.partition(".")[0] in config:  # e.g. diffusion.* only on diffusion runs
            set_field(config, field, parse_value(field, text, get_field(config, field)))
    if cached_only:
        return cached_init_probe(config)
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        state = build_model_state(config, mesh)
        params = jax.jit(lambda: state.init_params(config.seed), out_shardings=state.param_shardings)()
        return init_probe(config, state, params)


def write_init_probes(sweep_file: str, results_dir: str | Path, overrides: dict[str, str],
                      cached_only: bool = False) -> Path:
    """Appends the init rows missing from ``<results_dir>/init_probes.csv`` (with ``cached_only``, those
    already probed and cached, computing none); returns its path."""
    results_dir = Path(results_dir)
    if not (results_dir / RESULTS_NAME).is_file():
        raise ConfigError(f"{results_dir} has no {RESULTS_NAME}; give a study's results folder")
    path = results_dir / INIT_NAME
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["run_id"])
    for row, run in matched_runs(sweep_file, read_table(results_dir)):
        if row["run_id"] in set(done["run_id"]):
            continue
        probe = probe_init(run, overrides, cached_only)
        if probe is None:
            continue
        fields = {column: row[column] for column in RUN_COLUMNS if column in row}
        record = {**fields, "kind": "eval", "point": INIT, "step": 0, "examples": 0, "flops": 0.0, **probe}
        done = pd.concat([done, pd.DataFrame([record])], ignore_index=True)
        write_atomic(path, done.to_csv(index=False).encode())
        print(f"{row['run_id']}: init probe {record['probe_accuracy']:.4f} ({record['probe_layer']})",
              flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file")
    parser.add_argument("results_dir")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--cached", action="store_true", help="write the probes already cached, compute none")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    print(write_init_probes(args.sweep_file, args.results_dir, overrides, args.cached))


if __name__ == "__main__":
    main()

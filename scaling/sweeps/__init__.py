"""Sweeps: grids of run configs with stable ids, a preemption-safe store, a runner and its executors.

- ``spec``: budgets, run specs, stable run ids, ``grid`` and sweep files (``sweeps/<name>.py``).
- ``store``: ``<root>/<sweep>/<run_id>/`` run directories, leases and run states.
- ``executors``: where a run trains (in this process, spawned processes, Ray tasks).
- ``runner``: claims runs, executes them, records outcomes, reports progress.
- ``pods``: the gcloud TPU VM and XPK commands that run a sweep on a TPU pod.
- ``results``: the results table derived from the run files.
- ``tuned``: the one table of tuned optimizer values (``sweeps/tuned.csv``) that study sweeps read.
"""

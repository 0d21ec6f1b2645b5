"""Study harness: ``attrpreserve sweep`` runs a grid of configs x overrides x seeds (``fit``, then
``evaluate`` per protocol, each run a subprocess with its own folder), resumes half-finished
sweeps, and aggregates the results into one table and one plot.

Modules: ``grid`` (keys, values, product, run names), ``plan`` (run specs, per-run configs, state
on disk, manifest), ``execute`` (one run; local pool and submitit engines), ``aggregate`` (means,
references, tables), ``plot`` (sweep.png), ``cli`` (the command).
"""

from attrpreserve.study.aggregate import aggregate, load_reference, recovered_share, summarize, write_tables
from attrpreserve.study.cli import aggregate_sweep, build_parser, main
from attrpreserve.study.execute import execute_run
from attrpreserve.study.grid import expand_grid, parse_value, resolve_key, run_name, split_values
from attrpreserve.study.plan import RunSpec, plan_runs, run_status
from attrpreserve.study.plot import plot_sweep

__all__ = [
    "RunSpec", "aggregate", "aggregate_sweep", "build_parser", "execute_run", "expand_grid", "load_reference",
    "main", "parse_value", "plan_runs", "plot_sweep", "recovered_share", "resolve_key", "run_name", "run_status",
    "split_values", "summarize", "write_tables",
]

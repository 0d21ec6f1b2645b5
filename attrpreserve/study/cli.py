"""``attrpreserve sweep``: plan a grid of runs, run what is not done yet, aggregate the results."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attrpreserve.study.aggregate import aggregate, format_markdown, load_reference, write_tables
from attrpreserve.study.execute import (
    ENGINES,
    active_slurm_jobs,
    available_cores,
    fit_command,
    run_local,
    run_submitit,
    submitit_executor,
)
from attrpreserve.study.grid import parse_assignment, split_values
from attrpreserve.study.plan import (
    RunSpec,
    check_folder,
    latest_checkpoint,
    plan_runs,
    read_manifest,
    run_status,
    write_manifest,
)
from attrpreserve.study.plot import plot_sweep

DESCRIPTION = """Run a grid of configs x overrides x seeds: each run is `attrpreserve fit` then `attrpreserve
evaluate` (one per protocol), in its own folder under --out; finished runs are skipped, half-finished
ones resume from their last checkpoint. Then one table (table.md/csv/json) and one plot (sweep.png).

Keys: callbacks.weight (the init argument of the one callback that takes it; callbacks.ClassName.key
among several), model.lr, model.teacher.weights, data.num_train, trainer.max_epochs, ... (init_args
levels left out), or a full LightningCLI flag (--model.init_args.lr). {seed} in a value is the run's seed.
"""

EPILOG = """examples:
  attrpreserve sweep --config configs/synthetic/distill_div8_sswa.yaml --grid callbacks.weight=10,100,1000 \\
      --seeds 0,1,2 --out runs/sweeps/beta
  attrpreserve sweep --config configs/synthetic/distill_div8_kd.yaml --config configs/synthetic/distill_div8_sswa.yaml \\
      --seeds 0,1,2 --workers 2 --out runs/sweeps/arms --reference teacher=runs/sweeps/teacher \\
      --reference KD=runs/sweeps/arms/distill_div8_kd
  attrpreserve sweep ... --engine slurm --slurm-partition gpu --gpus-per-node 1 --cpus-per-task 8 --timeout-min 240
  attrpreserve sweep --out runs/sweeps/beta --aggregate-only     (the manifest names the runs)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attrpreserve sweep", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="a LightningCLI config (repeatable: one arm each)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to sweep (repeatable: the cartesian product)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="fixed",
                   help="a fixed override of every run (repeatable)")
    p.add_argument("--seeds", default="0", help="comma-separated seed_everything values (default: 0)")
    p.add_argument("--out", required=True, help="the sweep's folder: runs, manifest.json, table.*, sweep.png")
    p.add_argument("--teacher-weights", default=None, metavar="PATH",
                   help="teacher checkpoint of every distillation config (model.teacher_weights or "
                        "model.teacher.weights, whichever the config has); {seed} allowed")
    e = p.add_argument_group("evaluation")
    e.add_argument("--protocols", default="all", help="comma-separated: all, paper, torchray (default: all)")
    e.add_argument("--methods", default="gradcam", help="comma-separated attribution methods (default: gradcam)")
    e.add_argument("--device", default=None, help="evaluate's --device (default: evaluate's own)")
    e.add_argument("--max-batches", type=int, default=None, help="evaluate's --max-batches")
    e.add_argument("--eval-args", default="", metavar="'FLAGS'",
                   help="further evaluate flags, one quoted string: --eval-args='--batch-size 16'")
    r = p.add_argument_group("execution")
    r.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: a pool of --workers processes; submitit-local: submitit's LocalExecutor; "
                        "slurm: one SLURM job per run (a job array)")
    r.add_argument("--workers", type=int, default=None,
                   help="runs at a time (default: 1 locally, no limit on SLURM)")
    r.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS per run (default: cores / workers locally, the job's cores on SLURM)")
    r.add_argument("--dry-run", action="store_true", help="print the runs still to do and their fit command; run nothing")
    r.add_argument("--aggregate-only", action="store_true", help="run nothing; aggregate what is there")
    s = p.add_argument_group("submitit / SLURM")
    s.add_argument("--timeout-min", type=int, default=1440, help="time limit of a job in minutes (default: 1440)")
    s.add_argument("--cpus-per-task", type=int, default=None)
    s.add_argument("--gpus-per-node", type=int, default=None)
    s.add_argument("--mem-gb", type=float, default=None)
    s.add_argument("--slurm-partition", default=None)
    s.add_argument("--slurm-account", default=None)
    s.add_argument("--slurm-qos", default=None)
    s.add_argument("--slurm-constraint", default=None)
    s.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before each job, e.g. 'source .venv/bin/activate' (repeatable)")
    s.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm-param exclude=node12 (repeatable)")
    s.add_argument("--no-wait", action="store_true",
                   help="submit and return; run again with --aggregate-only when the jobs are done")
    a = p.add_argument_group("aggregation")
    a.add_argument("--reference", action="append", default=[], metavar="NAME=PATH",
                   help="a horizontal line in the plot: a results.json, a run folder or a folder of per-seed runs; "
                        "'teacher' and 'KD' together add the share of the point accuracy KD lost that a row gives back")
    return p


def _join_flag_values(argv: Sequence[str]) -> list[str]:
    """``--set --model.init_args.lr=0.1`` -> ``--set=--model.init_args.lr=0.1`` (argparse would read
    the value as an option)."""
    out, items = [], list(argv)
    for i, item in enumerate(items):
        if i > 0 and items[i - 1] in ("--set", "--grid") and item.startswith("--") and out and out[-1] == items[i - 1]:
            out[-1] = f"{items[i - 1]}={item}"
        else:
            out.append(item)
    return out


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in split_values(text)]
    except ValueError as err:
        raise ValueError(f"Expected argument `{option}` to be comma-separated integers, but got {text!r}.") from err


def _names(text: str, option: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError(f"Expected argument `{option}` to name at least one value, but got {text!r}.")
    return names


def plan_from_args(args: argparse.Namespace) -> list[RunSpec]:
    """The runs the arguments describe (checked: each folder holds this run or nothing)."""
    workers = args.workers or 1
    threads = args.threads
    if threads is None and args.engine != "slurm":
        threads = max(1, available_cores() // workers)
    evaluate_extra = shlex.split(args.eval_args)
    if args.device:
        evaluate_extra += ["--device", args.device]
    if args.max_batches is not None:
        evaluate_extra += ["--max-batches", str(args.max_batches)]
    runs = plan_runs(
        args.config, args.out,
        grid=[(key, split_values(values)) for key, values in (parse_assignment(g, "--grid") for g in args.grid)],
        fixed=[parse_assignment(s, "--set") for s in args.fixed], seeds=_ints(args.seeds, "--seeds"),
        protocols=_names(args.protocols, "--protocols"), methods=_names(args.methods, "--methods"),
        teacher_weights=args.teacher_weights, evaluate_extra=evaluate_extra, threads=threads,
    )
    for spec in runs:
        check_folder(spec)
    return runs


def _check(args: argparse.Namespace) -> None:
    for name in ("workers", "threads", "max_batches", "timeout_min"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"Expected argument `--{name.replace('_', '-')}` to be >= 1, but got {value}.")
    if not args.config and not args.aggregate_only:
        raise ValueError("Expected at least one `--config` (or `--aggregate-only` on an existing sweep's --out).")
    for item in args.reference:
        parse_assignment(item, "--reference")
    for item in args.slurm_param:
        parse_assignment(item, "--slurm-param")


def _executor_parameters(args: argparse.Namespace) -> dict[str, Any]:
    parameters: dict[str, Any] = {"timeout_min": args.timeout_min, "cpus_per_task": args.cpus_per_task,
                                  "gpus_per_node": args.gpus_per_node, "mem_gb": args.mem_gb, "name": "attrpreserve"}
    if args.engine == "slurm":
        parameters.update(slurm_partition=args.slurm_partition, slurm_account=args.slurm_account,
                          slurm_qos=args.slurm_qos, slurm_constraint=args.slurm_constraint,
                          slurm_setup=args.slurm_setup or None,
                          slurm_additional_parameters=dict(parse_assignment(i, "--slurm-param")
                                                           for i in args.slurm_param) or None)
    return parameters


def collect(runs: Sequence[Mapping[str, Any]], protocol: str) -> list[dict[str, Any]]:
    """Aggregation entries of the runs that have results for ``protocol``."""
    entries = []
    for run in runs:
        path = Path(run["folder"]) / "results" / protocol / "results.json"
        if path.is_file():
            entries.append({"config": run["config_name"], "grid": run["grid"], "seed": run["seed"],
                            "result": json.loads(path.read_text())})
    return entries


def aggregate_sweep(out: str | Path, runs: Sequence[Mapping[str, Any]], protocols: Sequence[str],
                    methods: Sequence[str], references: Sequence[tuple[str, str]] = ()) -> str | None:
    """Write ``table.{md,csv,json}`` and ``sweep.png`` into ``out``; returns the first table as
    Markdown (None when no run has results yet)."""
    grid_keys = list(dict.fromkeys(key for run in runs for key in run["grid"]))
    tables, loaded = [], {}
    for protocol in protocols:
        refs = {name: load_reference(path, protocol, methods[0], name) for name, path in references}
        loaded[protocol] = refs
        entries = collect(runs, protocol)
        for method in methods:
            tables.append((protocol, method, aggregate(entries, method, refs) if entries else []))
    if not any(rows for _, _, rows in tables):
        return None
    write_tables(out, tables, grid_keys, loaded)
    protocol, method, rows = tables[0]
    plot_sweep(rows, grid_keys, Path(out) / "sweep.png", loaded[protocol],
               title=f"{Path(out).name}: protocol {protocol}, {method}")
    return format_markdown(rows, grid_keys, loaded[protocol], title=f"protocol {protocol}, {method}")


def main(argv: Sequence[str] | None = None) -> int:
    """``attrpreserve sweep``. Returns 0 when every run is done (or was only planned, submitted
    with ``--no-wait``, or aggregated), 1 when a run failed (the others still ran; run the same
    command again to retry the failed ones).

    Raises:
        ValueError, FileNotFoundError: a user error, naming the argument.
    """
    args = build_parser().parse_args(_join_flag_values(sys.argv[1:] if argv is None else argv))
    _check(args)
    references = [parse_assignment(item, "--reference") for item in args.reference]
    out = Path(args.out)
    if args.aggregate_only and not args.config:
        manifest = read_manifest(out)
        runs, protocols, methods = manifest["runs"], manifest["protocols"], manifest["methods"]
    else:
        specs = plan_from_args(args)
        runs = [spec.to_dict() for spec in specs]
        protocols, methods = specs[0].protocols, specs[0].methods
    if args.aggregate_only:
        if args.config:
            write_manifest(out, specs, argv=argv)
        return _aggregate_and_print(out, runs, protocols, methods, references)

    status = {spec.id: run_status(spec) for spec in specs}
    todo = [spec for spec in specs if status[spec.id] != "done"]
    counts = {s: list(status.values()).count(s) for s in ("done", "fitted", "partial", "new")}
    print(f"sweep {out}: {len(specs)} runs; done {counts['done']}, to evaluate {counts['fitted']}, "
          f"to resume {counts['partial']}, new {counts['new']}")
    if args.dry_run:
        for spec in todo:
            if status[spec.id] == "fitted":
                print(f"  {spec.id} [fitted]: evaluate {', '.join(spec.protocols)}")
            else:
                print(f"  {spec.id} [{status[spec.id]}]: {shlex.join(fit_command(spec, latest_checkpoint(spec.folder)))}")
        return 0
    executor = None
    if args.engine != "local" and todo:
        executor = submitit_executor(args.engine, out / ".submitit", _executor_parameters(args))
    lock, outcomes, jobs, failed = threading.Lock(), {}, {}, []
    if args.engine == "slurm" and todo:  # jobs of an earlier --no-wait that are still out: not twice
        earlier = read_manifest(out)["runs"] if (out / "manifest.json").is_file() else []
        busy = active_slurm_jobs(out / ".submitit", {r["id"]: r["job_id"] for r in earlier
                                                      if r.get("job_id") and r["id"] in status})
        if busy:
            print(f"{len(busy)} run(s) still queued or running on SLURM, not submitted again: {', '.join(sorted(busy))}")
            jobs.update({r["id"]: r["job_id"] for r in earlier if r["id"] in busy})
            todo = [spec for spec in todo if spec.id not in busy]
    write_manifest(out, specs, {i: {"job_id": j} for i, j in jobs.items()}, argv=argv)

    def record() -> None:
        merged = {i: {**({"job_id": jobs[i]} if i in jobs else {}), **outcomes.get(i, {})} for i in {*jobs, *outcomes}}
        write_manifest(out, specs, merged, argv=argv)

    def on_outcome(outcome: dict[str, Any]) -> None:
        with lock:
            outcomes[outcome["id"]] = outcome
            where = f"[{len(outcomes)}/{len(todo)}] {outcome['id']}"
            if outcome["status"] == "failed":
                failed.append(outcome["id"])
                print(f"  {where}: FAILED at {outcome['step']} (see {outcome.get('log')}) "
                      f"{outcome.get('error', '')}".rstrip(), flush=True)
            else:
                print(f"  {where}: done in {outcome.get('seconds', 0):.0f} s", flush=True)
            record()

    def on_submit(spec: RunSpec, job_id: str) -> None:
        with lock:
            jobs[spec.id] = job_id

    if args.engine == "local":
        run_local(todo, args.workers or 1, on_outcome)
    elif executor is not None:
        run_submitit(todo, executor, args.workers, on_outcome, wait=not args.no_wait, on_submit=on_submit)
        if args.no_wait:
            record()
            print(f"submitted {len(todo)} jobs (ids in {out / 'manifest.json'}); when they are done: "
                  f"attrpreserve sweep --out {out} --aggregate-only")
            return 0
    code = _aggregate_and_print(out, runs, protocols, methods, references)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; run the same command again to retry them.")
        return 1
    return code


def _aggregate_and_print(out: Path, runs: Sequence[Mapping[str, Any]], protocols: Sequence[str],
                         methods: Sequence[str], references: Sequence[tuple[str, str]]) -> int:
    table = aggregate_sweep(out, runs, protocols, methods, references)
    if table is None:
        print(f"no results yet under {out}")
        return 0
    print(table)
    print(f"wrote {out}/table.{{md,csv,json}} and {out}/sweep.png")
    return 0

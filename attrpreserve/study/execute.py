"""Run a sweep's runs: one run is ``attrpreserve fit`` then ``attrpreserve evaluate`` per protocol,
each a subprocess of this Python (isolated: a crash, a leak or a thread setting stays in its run);
many runs go to a local pool of workers or to submitit (SLURM, or its local executor).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

from attrpreserve.study.plan import RunSpec, latest_checkpoint, results_complete, write_run_json

Outcome = dict[str, Any]
ENGINES = ("local", "submitit-local", "slurm")


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _environment(spec: RunSpec) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(spec.threads or available_cores())
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    return env


def _call(command: Sequence[str], log: Path, spec: RunSpec) -> int:
    """Run ``command`` in the run's working directory, stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} (cwd {spec.cwd})\n$ {shlex.join(command)}\n")
        handle.flush()
        return subprocess.call(list(command), stdout=handle, stderr=subprocess.STDOUT, cwd=spec.cwd,
                               env=_environment(spec))


def _link(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s content, atomically: a hard link where possible, else a copy."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def fit_command(spec: RunSpec, resume: Path | None = None) -> list[str]:
    """``python -m attrpreserve fit`` for the run (from ``resume`` when given)."""
    command = [sys.executable, "-m", "attrpreserve", "fit", "--config", str(Path(spec.folder) / "sweep_config.yaml"),
               "--seed_everything", str(spec.seed), *spec.fit_args]
    return command + (["--ckpt_path", str(resume)] if resume is not None else [])


def evaluate_command(spec: RunSpec, protocol: str) -> list[str]:
    """``python -m attrpreserve evaluate`` of the run's final checkpoint under ``protocol``."""
    return [sys.executable, "-m", "attrpreserve", "evaluate", "--ckpt", str(Path(spec.folder) / "final.ckpt"),
            "--no-progress", *spec.evaluate_args, "--methods", ",".join(spec.methods), "--protocol", protocol,
            "--out", str(Path(spec.folder) / "results" / protocol)]


def execute_run(spec: RunSpec | Mapping[str, Any]) -> Outcome:
    """Bring one run to ``done``: fit (resuming from its newest last checkpoint) unless
    ``final.ckpt`` exists, then every protocol whose results are missing. Never raises for a
    failing step: the outcome says which step failed and where its log is.

    Returns:
        ``{"id", "status": "done" | "failed", "step", "returncode", "log", "seconds"}``.
    """
    spec = spec if isinstance(spec, RunSpec) else RunSpec(**spec)
    folder, started = Path(spec.folder), time.time()
    outcome: Outcome = {"id": spec.id, "status": "done", "step": None, "returncode": 0, "log": None}

    def finish(**update: Any) -> Outcome:
        outcome.update(update, seconds=round(time.time() - started, 1))
        write_run_json(spec, **{k: v for k, v in outcome.items() if k != "id"})
        return outcome

    write_run_json(spec, status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    final = folder / "final.ckpt"
    if not final.is_file():
        shutil.rmtree(folder / "results", ignore_errors=True)  # results of an earlier fit are stale
        (folder / "sweep_config.yaml").write_text(yaml.safe_dump(spec.config, sort_keys=False))
        resume = latest_checkpoint(folder)
        log = folder / "fit.log"
        code = _call(fit_command(spec, resume), log, spec)
        if code != 0:
            return finish(status="failed", step="fit", returncode=code, log=str(log))
        last = latest_checkpoint(folder)
        if last is None:
            return finish(status="failed", step="fit", returncode=code, log=str(log),
                          error=f"fit wrote no last*.ckpt under {folder / 'checkpoints'}")
        _link(last, final)
        if spec.cache_dir:
            shutil.rmtree(spec.cache_dir, ignore_errors=True)
    for protocol in spec.protocols:
        results = folder / "results" / protocol
        if results_complete(results, spec.methods):
            continue
        log = results / f"evaluate-{protocol}.log"
        code = _call(evaluate_command(spec, protocol), log, spec)
        if code != 0 or not results_complete(results, spec.methods):
            return finish(status="failed", step=f"evaluate {protocol}", returncode=code, log=str(log))
    return finish()


# -- engines ---------------------------------------------------------------------------------------
def run_local(specs: Sequence[RunSpec], workers: int, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    """Run ``specs`` with ``workers`` at a time on this machine (threads that each wait on a run's
    subprocesses; the work itself is in those processes)."""
    if workers <= 1:
        return [_report(execute_run(spec), on_outcome) for spec in specs]
    lock, outcomes = threading.Lock(), []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(execute_run, spec) for spec in specs]):
            with lock:
                outcomes.append(_report(future.result(), on_outcome))
    return outcomes


def _report(outcome: Outcome, on_outcome: Callable[[Outcome], None]) -> Outcome:
    on_outcome(outcome)
    return outcome


def submitit_executor(engine: str, folder: str | os.PathLike, parameters: Mapping[str, Any]) -> Any:
    """A submitit ``AutoExecutor`` for ``engine`` (``slurm`` or ``submitit-local``) with
    ``parameters`` (submitit's names: ``timeout_min``, ``slurm_partition``, ...; None dropped).

    Raises:
        ValueError: submitit is not installed.
    """
    try:
        import submitit
    except ImportError as err:
        raise ValueError(f"Argument `--engine {engine}` needs submitit: pip install attrpreserve[cluster] "
                         "(or pip install 'submitit>=1.5').") from err
    executor = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster="slurm" if engine == "slurm" else "local")
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor


def run_submitit(specs: Sequence[RunSpec], executor: Any, workers: int | None, on_outcome: Callable[[Outcome], None],
                 wait: bool = True, on_submit: Callable[[RunSpec, str], None] | None = None) -> list[Outcome]:
    """Run ``specs`` as submitit jobs (one job per run). SLURM takes them as one job array (at most
    ``workers`` at a time, all when None); the local executor runs ``workers`` at a time.
    Returns the outcomes (none when ``wait`` is False)."""
    if not specs:
        return []
    local = getattr(executor, "cluster", "") != "slurm"
    if not local:
        if workers:
            executor.update_parameters(slurm_array_parallelism=workers)
        jobs = executor.map_array(execute_run, list(specs))
        for spec, job in zip(specs, jobs):
            if on_submit:
                on_submit(spec, str(job.job_id))
        return [_report(_result(spec, job), on_outcome) for spec, job in zip(specs, jobs)] if wait else []
    queue, running, outcomes = list(specs), [], []
    limit = max(1, workers or 1)
    while queue or running:
        while queue and len(running) < limit:
            spec = queue.pop(0)
            job = executor.submit(execute_run, spec)
            if on_submit:
                on_submit(spec, str(job.job_id))
            running.append((spec, job))
        finished = [(spec, job) for spec, job in running if job.done()]
        for item in finished:
            running.remove(item)
            outcomes.append(_report(_result(*item), on_outcome))
        if not finished:
            time.sleep(0.5)
    return outcomes


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED")


def active_slurm_jobs(folder: str | os.PathLike, job_ids: Mapping[str, str]) -> set[str]:
    """The runs (of ``{run id: job id}``) whose SLURM job is still queued or running, by sacct
    through submitit; a job sacct does not know counts as finished."""
    import submitit

    active = set()
    for run_id, job_id in job_ids.items():
        try:
            info = submitit.SlurmJob(folder=str(Path(folder) / "%j"), job_id=job_id).get_info(mode="force")
        except Exception:  # noqa: BLE001: sacct missing or failing: nothing known about the job
            info = {}
        if str(info.get("State", "")).split(" ")[0] in ACTIVE_STATES:
            active.add(run_id)
    return active


def _result(spec: RunSpec, job: Any) -> Outcome:
    """A job's outcome; a job that died (killed, timed out, an exception) becomes a failed outcome."""
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001: submitit raises its own FailedJobError and others
        paths = getattr(job, "paths", None)
        return {"id": spec.id, "status": "failed", "step": "job", "returncode": None,
                "log": str(paths.stderr) if paths is not None else None, "error": str(err).strip()[-2000:],
                "job_id": str(getattr(job, "job_id", ""))}

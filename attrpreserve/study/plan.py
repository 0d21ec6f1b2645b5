"""Sweep plans: one :class:`RunSpec` per (config, grid point, seed), each with its own folder and
its own config file (the overrides applied, checkpoints, logger and teacher cache redirected into
the folder), and each run's state on disk (new, partial, fitted, done) for resuming.

A run's folder (``<out>/<config>/<key>=<value>/.../seed=<s>``)::

    run.json            what the run is (config, overrides, seed) and its last status
    sweep_config.yaml   the config given to ``attrpreserve fit``
    fit.log             fit's stdout and stderr (appended on every attempt)
    checkpoints/        the config's ModelCheckpoints (last*.ckpt, epochNNN.ckpt)
    final.ckpt          hard link to the newest last*.ckpt, made when fit succeeded: "fit done"
    results/<protocol>/ results.json/csv of ``attrpreserve evaluate``, evaluate-<protocol>.log beside
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attrpreserve.study.grid import (
    SEED,
    Target,
    expand_grid,
    get_path,
    parse_value,
    resolve_key,
    run_name,
    set_path,
    short_names,
)

PROTOCOLS = ("all", "paper", "torchray")
CHECKPOINT_CLASS = "pytorch_lightning.callbacks.ModelCheckpoint"


@dataclass
class RunSpec:
    """One run of a sweep: everything a worker needs, JSON- and pickle-friendly.

    Attributes:
        id: folder relative to the sweep's ``--out`` (``distill_div8_sswa/weight=100/seed=0``).
        folder: absolute folder.
        config_path: the config file given with ``--config`` (absolute).
        config_name: the run's first folder level (the config's stem).
        seed: ``seed_everything``.
        grid: short name -> value as written, of this run's grid point.
        overrides: every override (``--set``, ``--teacher-weights``, grid) as ``[key, value]``, ``{seed}`` filled.
        config: the config dict written to ``sweep_config.yaml``.
        fit_args: flags passed through to ``fit`` after the config.
        evaluate_args: ``evaluate`` flags besides ``--ckpt``, ``--out`` and ``--protocol``.
        protocols: evaluation protocols, each a ``results/<protocol>`` folder.
        methods: attribution methods that every ``results.json`` must hold.
        threads: ``OMP_NUM_THREADS`` of the run's processes (None: the cores the job sees).
        cwd: working directory of the processes (relative paths in configs resolve from here).
        cache_dir: the run's own teacher cache, deleted once fit succeeded (None: no cache).
    """

    id: str
    folder: str
    config_path: str
    config_name: str
    seed: int
    grid: dict[str, str]
    overrides: list[list[Any]]
    config: dict[str, Any]
    fit_args: list[str] = field(default_factory=list)
    evaluate_args: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=lambda: ["all"])
    methods: list[str] = field(default_factory=lambda: ["gradcam"])
    threads: int | None = None
    cwd: str = "."
    cache_dir: str | None = None

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run (evaluation options excluded: they only add results)."""
        return {"config_path": self.config_path, "seed": self.seed, "overrides": self.overrides}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a LightningCLI YAML config.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a YAML mapping.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Expected argument `--config` to name a config file, but {str(path)!r} does not exist.")
    content = yaml.safe_load(file.read_text())
    if not isinstance(content, dict):
        raise ValueError(f"Expected argument `--config` {str(path)!r} to hold a YAML mapping, but got "
                         f"{type(content).__name__}.")
    return content


def config_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Folder names of the configs: the stem, prefixed by the parent folder where two stems collide.

    Raises:
        ValueError: a config given twice.

    Example:
        >>> config_names(["configs/synthetic/distill_div8_kd.yaml", "configs/synthetic/distill_div8_sswa.yaml"])
        ['distill_div8_kd', 'distill_div8_sswa']
        >>> config_names(["configs/voc/teacher.yaml", "configs/synthetic/teacher.yaml"])
        ['voc-teacher', 'synthetic-teacher']
    """
    resolved = [str(Path(p).resolve()) for p in paths]
    twice = sorted({p for p in resolved if resolved.count(p) > 1})
    if twice:
        raise ValueError(f"Expected each `--config` once, but got {', '.join(twice)} more than once.")
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}-{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def teacher_weights_key(config: Mapping[str, Any], source: str = "") -> str:
    """The key that holds the teacher's weights file in a distillation config:
    ``model.teacher_weights`` where the config (or the module) has that argument, else
    ``model.teacher.weights`` (the teacher network's own ``weights``).

    Raises:
        ValueError: the config has no teacher.

    Example:
        >>> teacher_weights_key({"model": {"class_path": "M", "init_args": {"teacher_weights": "t.ckpt"}}})
        'model.teacher_weights'
        >>> teacher_weights_key({"model": {"class_path": "M", "init_args": {"teacher": {"class_path": "N",
        ...     "init_args": {"weights": "t.ckpt"}}}}})
        'model.teacher.weights'
    """
    init_args = get_path(config, ("model", "init_args"), {}) or {}
    if "teacher_weights" in init_args:
        return "model.teacher_weights"
    if isinstance(init_args.get("teacher"), Mapping) and "weights" in (init_args["teacher"].get("init_args") or {}):
        return "model.teacher.weights"
    class_path = get_path(config, ("model", "class_path"))
    if class_path:
        try:
            resolve_key(config, "model.teacher_weights", source)
            return "model.teacher_weights"
        except ValueError:
            pass
        if isinstance(init_args.get("teacher"), Mapping):
            return "model.teacher.weights"
    raise ValueError(f"Argument `--teacher-weights` was given, but config {source} has no teacher "
                     "(no model.init_args.teacher_weights or model.init_args.teacher).")


def _class_name(node: Any) -> str:
    return str(node.get("class_path", "")).rpartition(".")[2] if isinstance(node, Mapping) else ""


def redirect_outputs(config: Mapping[str, Any], folder: str, run_id: str, source: str = "") -> dict[str, Any]:
    """A copy of ``config`` whose outputs go into ``folder``: ``trainer.default_root_dir``, the
    ``dirpath`` of every ModelCheckpoint (``<folder>/checkpoints``; one with ``save_last`` is added
    when the config has none), and the loggers' ``save_dir`` (``name`` becomes the run id).

    Raises:
        ValueError: the config turns checkpointing off (the sweep evaluates the last checkpoint).

    Example:
        >>> config = {"trainer": {"logger": {"class_path": "W", "init_args": {"save_dir": "runs/x", "name": "x"}},
        ...           "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
        ...                          "init_args": {"dirpath": "runs/x/checkpoints", "save_last": True}}]}}
        >>> out = redirect_outputs(config, "/s/kd/seed=0", "kd/seed=0")
        >>> out["trainer"]["default_root_dir"], out["trainer"]["logger"]["init_args"]
        ('/s/kd/seed=0', {'save_dir': '/s/kd/seed=0', 'name': 'kd-seed=0'})
        >>> out["trainer"]["callbacks"][0]["init_args"]["dirpath"]
        '/s/kd/seed=0/checkpoints'
    """
    config = copy.deepcopy(dict(config))
    trainer = config.setdefault("trainer", {}) or {}
    config["trainer"] = trainer
    if trainer.get("enable_checkpointing") is False:
        raise ValueError(f"Config {source} sets trainer.enable_checkpointing: false, but a sweep evaluates each "
                         "run's last checkpoint.")
    trainer["default_root_dir"] = folder
    callbacks = trainer.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
    checkpoints = [c for c in callbacks if _class_name(c) == "ModelCheckpoint"]
    for callback in checkpoints:
        callback.setdefault("init_args", {})
        callback["init_args"] = dict(callback["init_args"] or {}, dirpath=f"{folder}/checkpoints")
    if not any((c.get("init_args") or {}).get("save_last") for c in checkpoints):
        callbacks.append({"class_path": CHECKPOINT_CLASS,
                          "init_args": {"dirpath": f"{folder}/checkpoints", "save_last": True}})
    trainer["callbacks"] = callbacks
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and "class_path" in logger:
            init_args = logger.setdefault("init_args", {}) or {}
            logger["init_args"] = init_args
            init_args["save_dir"] = folder
            if "name" in init_args:
                init_args["name"] = run_id.replace("/", "-")
    return config


def evaluate_arguments(config: Mapping[str, Any], source: str = "") -> list[str]:
    """``attrpreserve evaluate`` data flags that match the config's data module.

    Raises:
        ValueError: a data module other than the synthetic or VOC one.

    Example:
        >>> evaluate_arguments({"data": {"class_path": "attrpreserve.SyntheticDataModule",
        ...                              "init_args": {"num_classes": 5, "seed": 3, "num_test": 300}}})
        ['--data', 'synthetic', '--num-classes', '5', '--image-size', '64', '--seed', '3', '--max-images', '300']
    """
    data = config.get("data") or {}
    init_args = data.get("init_args") or {} if isinstance(data, Mapping) else {}
    name = _class_name(data)
    if name == "SyntheticDataModule":
        flags = ["--data", "synthetic", "--num-classes", str(init_args.get("num_classes", 4)),
                 "--image-size", str(init_args.get("image_size", 64)), "--seed", str(init_args.get("seed", 0))]
        # the config's localisation split: the first num_test images of evaluate's (same scenes)
        return flags + (["--max-images", str(init_args["num_test"])] if "num_test" in init_args else [])
    if name == "VOCDataModule":
        if "root" not in init_args:
            raise ValueError(f"Config {source}: data.init_args.root (the VOC2012 folder) is not set.")
        return ["--data", str(init_args["root"]), "--image-size", str(init_args.get("image_size", 227))]
    raise ValueError(f"Config {source}: the sweep evaluates SyntheticDataModule or VOCDataModule data, but the "
                     f"config's data is {data.get('class_path') if isinstance(data, Mapping) else data!r}.")


def plan_runs(
    configs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    grid: Sequence[tuple[str, Sequence[str]]] = (),
    fixed: Sequence[tuple[str, str]] = (),
    seeds: Sequence[int] = (0,),
    protocols: Sequence[str] = ("all",),
    methods: Sequence[str] = ("gradcam",),
    teacher_weights: str | None = None,
    evaluate_extra: Sequence[str] = (),
    threads: int | None = None,
) -> list[RunSpec]:
    """Every run of a sweep, configs slowest, then grid points, then seeds.

    Args:
        configs: config files (one arm each).
        out: the sweep's folder.
        grid: ``[(key, [value as written, ...]), ...]``: the cartesian product.
        fixed: ``[(key, value), ...]`` set in every run.
        seeds: ``seed_everything`` values.
        protocols, methods: what ``evaluate`` runs.
        teacher_weights: a teacher checkpoint for every distillation config (the key it goes to is
            found per config, see :func:`teacher_weights_key`).
        evaluate_extra: further ``evaluate`` flags (``--device cpu``, ``--max-batches 2``).
        threads: ``OMP_NUM_THREADS`` of each run.

    ``{seed}`` in a value (``--set`` or grid) is replaced by the run's seed.

    Raises:
        ValueError: unknown keys (per config), a key both fixed and swept, an unknown protocol,
            no seeds, a data module the evaluation does not know.
        FileNotFoundError: a missing config file.
    """
    if not configs:
        raise ValueError("Expected at least one `--config`, but got none.")
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"Expected argument `--seeds` to be distinct integers >= 0, but got {list(seeds)}.")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if not protocols or unknown:
        raise ValueError(f"Expected argument `--protocols` to be among {', '.join(PROTOCOLS)}, but got "
                         f"{', '.join(protocols) or 'none'}.")
    both = sorted({k for k, _ in fixed} & {k for k, _ in grid})
    if both:
        raise ValueError(f"Key {', '.join(both)} is given to both `--set` and `--grid`; give it to one.")
    out = Path(out).resolve()
    cwd = str(Path.cwd())
    runs = []
    for path, name in zip(configs, config_names(configs)):
        source = str(path)
        config = load_config(path)
        settings = list(fixed)
        if teacher_weights is not None:
            settings.append((teacher_weights_key(config, source), teacher_weights))
        fixed_targets = [(resolve_key(config, key, source), value) for key, value in settings]
        grid_targets = [resolve_key(config, key, source) for key, _ in grid]
        names = short_names(grid_targets)
        evaluate_arguments(config, source)  # checked once per config, before any run starts
        for point in expand_grid([(key, values) for key, values in grid]):
            values = [value for _, value in point]
            for seed in seeds:
                run_id = run_name(name, list(zip(names, values)), seed)
                folder = str(out / run_id)
                resolved = copy.deepcopy(config)
                fit_args: list[str] = []
                overrides = []
                for target, value in [*fixed_targets, *zip(grid_targets, values)]:
                    value = value.replace(SEED, str(seed))
                    overrides.append([target.key, value])
                    if target.passthrough:
                        fit_args += [target.flag, value]
                    else:
                        set_path(resolved, target.path, parse_value(value))
                resolved = redirect_outputs(resolved, folder, run_id, source)  # after: the sweep owns the paths
                cache_dir = _redirect_cache(resolved, folder, [t for t, _ in fixed_targets] + grid_targets)
                runs.append(RunSpec(
                    id=run_id, folder=folder, config_path=str(Path(path).resolve()), config_name=name, seed=seed,
                    grid=dict(zip(names, values)), overrides=overrides, config=resolved, fit_args=fit_args,
                    evaluate_args=evaluate_arguments(resolved, source) + list(evaluate_extra),
                    protocols=list(protocols), methods=list(methods), threads=threads, cwd=cwd, cache_dir=cache_dir,
                ))
    return runs


def _redirect_cache(config: dict[str, Any], folder: str, targets: Sequence[Target]) -> str | None:
    """Give a run that caches its teacher its own cache folder (runs in parallel never share a
    half-built cache) unless the user set ``cache_dir``."""
    init_args = get_path(config, ("data", "init_args"), {}) or {}
    if not init_args.get("cache_teacher"):
        return None
    if any(t.path[-1:] == ("cache_dir",) and t.path[0] == "data" for t in targets):
        return None
    init_args["cache_dir"] = f"{folder}/teacher_cache"
    return init_args["cache_dir"]


# -- state on disk --------------------------------------------------------------------------------
def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest ``checkpoints/last*.ckpt`` of a run (two ModelCheckpoints with ``save_last`` in
    one folder write ``last.ckpt`` and ``last-v1.ckpt``; the newer one is the run's state)."""
    found = sorted(Path(folder, "checkpoints").glob("last*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return found[-1] if found else None


def results_complete(folder: str | os.PathLike, methods: Sequence[str]) -> bool:
    """``folder/results.json`` exists and holds every method in ``methods``."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        return False
    try:
        held = json.loads(path.read_text()).get("methods", {})
    except (json.JSONDecodeError, AttributeError):
        return False
    return all(method in held for method in methods)


def run_status(spec: RunSpec) -> str:
    """``done`` (fit and every protocol evaluated), ``fitted`` (evaluations missing), ``partial``
    (a last checkpoint, fit not finished: resumes from it) or ``new``."""
    folder = Path(spec.folder)
    if (folder / "final.ckpt").is_file():
        if all(results_complete(folder / "results" / p, spec.methods) for p in spec.protocols):
            return "done"
        return "fitted"
    return "partial" if latest_checkpoint(folder) is not None else "new"


def check_folder(spec: RunSpec) -> None:
    """Refuse a folder that holds another run (same name, other config, overrides or seed).

    Raises:
        ValueError: the folder's ``run.json`` describes a different run.
    """
    path = Path(spec.folder) / "run.json"
    if not path.is_file():
        return
    try:
        held = json.loads(path.read_text()).get("identity")
    except json.JSONDecodeError:
        return
    if held is not None and held != spec.identity():
        raise ValueError(
            f"Run folder {spec.folder!r} holds a different run ({held}) than the one planned ({spec.identity()}): "
            "the `--set` values or the config changed. Use another `--out`, or remove that folder.")


def write_run_json(spec: RunSpec, **status: Any) -> None:
    """``run.json``: the run's identity and status (written by whoever ran it last)."""
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"id": spec.id, "identity": spec.identity(), "config_name": spec.config_name, "grid": spec.grid,
              **status}
    _write_json(folder / "run.json", record)


def _write_json(path: Path, content: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def write_manifest(out: str | os.PathLike, runs: Sequence[RunSpec], outcomes: Mapping[str, Mapping] | None = None,
                   argv: Sequence[str] | None = None) -> Path:
    """``<out>/manifest.json``: every run (config, overrides, seed, folder, status, and the outcome
    of this invocation where it ran one)."""
    outcomes = outcomes or {}
    entries = []
    for spec in runs:
        entry = {"id": spec.id, "config": spec.config_path, "config_name": spec.config_name, "grid": spec.grid,
                 "overrides": spec.overrides, "seed": spec.seed, "folder": spec.folder, "status": run_status(spec)}
        outcome = dict(outcomes.get(spec.id) or {})
        if outcome.pop("status", None) == "failed":
            entry["status"] = "failed"
        entry.update({k: v for k, v in outcome.items() if k not in entry})
        entries.append(entry)
    path = Path(out) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"command": list(argv) if argv is not None else None,
                       "grid_keys": list(runs[0].grid) if runs else [],
                       "protocols": runs[0].protocols if runs else [], "methods": runs[0].methods if runs else [],
                       "runs": entries})
    return path


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """Read ``<out>/manifest.json``.

    Raises:
        FileNotFoundError: no manifest in ``out``.
    """
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"Expected argument `--out` {str(out)!r} to hold a sweep's manifest.json, but "
                                f"{str(path)!r} does not exist (give --config to plan the sweep).")
    return json.loads(path.read_text())

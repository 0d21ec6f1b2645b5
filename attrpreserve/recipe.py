"""What a run was: the settings of every callback, the networks, the weights files it read.

A checkpoint and a dashboard run must say how they were produced without the config file beside
them: the modules put :func:`training_recipe` into the checkpoint (``checkpoint["recipe"]``) and
into the logger's config at the start of a fit, and ``attrpreserve info`` prints it.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from attrpreserve.models.weights import file_digest, weights_source

# Trainer settings that change what is trained (not where or how fast it is logged).
TRAINER_FIELDS = ("max_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision",
                  "deterministic", "world_size")


def plain(value: Any) -> Any:
    """``value`` as JSON/YAML-safe data: containers recursed, other objects by ``repr``-like name.

    Example:
        >>> plain({"a": (1, 2.0), "b": None, "f": print})
        {'a': [1, 2.0], 'b': None, 'f': 'print'}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    return name if isinstance(name, str) else type(value).__name__


def callback_settings(callback: Any) -> dict[str, Any]:
    """The constructor arguments of ``callback`` as it holds them now (``class`` plus one entry
    per ``__init__`` parameter found as an attribute, or as Lightning's private ``_name``).

    Example:
        >>> from attrpreserve.callbacks import AttributionMatching
        >>> s = callback_settings(AttributionMatching(mode="swa", weight=10.0))
        >>> s["class"], s["mode"], s["weight"], s["drop_prob"], s["layer"]
        ('attrpreserve.callbacks.matching.AttributionMatching', 'swa', 10.0, 0.3, 'pool5')
    """
    cls = type(callback)
    settings: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return settings
    for name, param in params.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        for attr in (name, f"_{name}", f"__{name}"):
            if attr in vars(callback):
                settings[name] = plain(vars(callback)[attr])
                break
    return settings


def callbacks_recipe(callbacks: list[Any]) -> dict[str, dict[str, Any]]:
    """Settings of each callback, keyed by class name (``Name``, ``Name-1``, ... for repeats).

    Progress bars and model summaries are left out: they change nothing a run computes.
    """
    out: dict[str, dict[str, Any]] = {}
    for callback in callbacks:
        name = type(callback).__name__
        if "ProgressBar" in name or "ModelSummary" in name:
            continue
        key, n = name, 1
        while key in out:
            key, n = f"{name}-{n}", n + 1
        out[key] = callback_settings(callback)
    return out


# Callbacks whose settings change what is trained: a resume must keep them as they were. Panels,
# monitors, checkpointing and progress only look at the run.
TRAINING_CALLBACKS = ("AttributionMatching", "UnstructuredPruning", "StructuredPruning", "ShapleyPruning",
                      "ModelPruning", "EarlyStopping", "StochasticWeightAveraging", "GradientAccumulationScheduler",
                      "BackboneFinetuning")


def recipe_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How the training callbacks of ``current`` differ from ``saved`` (both :func:`callbacks_recipe`
    dicts): one line per removed or added callback and per changed setting.

    Example:
        >>> recipe_changes({"AttributionMatching": {"mode": "sswa", "weight": 100.0}}, {})
        ['AttributionMatching (mode=sswa, weight=100.0) is missing']
        >>> recipe_changes({"AttributionMatching": {"weight": 100.0}}, {"AttributionMatching": {"weight": 10.0}})
        ['AttributionMatching.weight: 100.0 -> 10.0']
    """
    def training(recipe: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in recipe.items() if k.split("-")[0] in TRAINING_CALLBACKS}

    old, new = training(saved), training(current)
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            args = ", ".join(f"{k}={v}" for k, v in old[name].items() if k != "class")
            lines.append(f"{name} ({args}) is missing")
        elif name not in old:
            lines.append(f"{name} was not in the run that wrote the checkpoint")
        else:
            # `class` is a module path, which may move between versions: the key names the class.
            for key in sorted((set(old[name]) | set(new[name])) - {"class"}):
                if old[name].get(key) != new[name].get(key):
                    lines.append(f"{name}.{key}: {old[name].get(key)} -> {new[name].get(key)}")
    return lines


def network_summary(model: nn.Module) -> dict[str, Any]:
    """Architecture spec (when we built it), parameter count and convolution sparsity."""
    from attrpreserve.pruning.complexity import count_parameters, sparsity
    from attrpreserve.models import model_spec

    summary: dict[str, Any] = {"class": type(model).__name__, "spec": plain(model_spec(model)),
                               "parameters": count_parameters(model)}
    try:
        summary["sparsity"] = round(float(sparsity(model)), 6)
    except ValueError:  # no conv layer: nothing to be sparse
        pass
    return summary


def training_recipe(trainer: Any, module: Any) -> dict[str, Any]:
    """Everything that decides what a fit trains, as plain data.

    Keys: ``module`` (class), ``networks`` (role -> :func:`network_summary`), ``weights`` (role ->
    :func:`weights_source` of the files loaded at construction), ``callbacks``
    (:func:`callbacks_recipe`), ``trainer`` (:data:`TRAINER_FIELDS`).
    """
    networks = {role: getattr(module, role) for role in ("model", "teacher", "student")
                if isinstance(getattr(module, role, None), nn.Module)}
    trainer_settings = {}
    for field in TRAINER_FIELDS:
        value = getattr(trainer, field, None)
        if value is None and field == "max_epochs":
            value = getattr(getattr(trainer, "fit_loop", None), "max_epochs", None)
        trainer_settings[field] = plain(value)
    if trainer_settings.get("deterministic") is None:
        connector = getattr(trainer, "_accelerator_connector", None)
        trainer_settings["deterministic"] = plain(getattr(connector, "deterministic", None))
    weights = {role: net.weights_source for role, net in networks.items()
               if isinstance(getattr(net, "weights_source", None), dict)}
    weights.update(getattr(module, "weights_sources", {}) or {})
    return {
        "module": type(module).__name__,
        "networks": {role: network_summary(net) for role, net in networks.items()},
        "weights": plain(weights),
        "callbacks": callbacks_recipe(list(getattr(trainer, "callbacks", []))),
        "trainer": trainer_settings,
    }


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    return str(value)


def describe_checkpoint(path: str | os.PathLike, as_json: bool = False) -> str:
    """A checkpoint's training recipe as text (or JSON): module, networks with parameters and
    sparsity, the weights files it started from, every callback's settings, epochs and steps,
    the metrics at save time.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a checkpoint of ``attrpreserve fit``.
    """
    import json

    from attrpreserve.models.weights import read_checkpoint

    path = Path(path)
    ckpt = read_checkpoint(path)
    recipe = dict(ckpt.get("recipe") or {})
    info = {
        "checkpoint": str(path.resolve()),
        "sha256": file_digest(path),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "module": recipe.get("module"),
        "hyper_parameters": plain(ckpt.get("hyper_parameters", {})),
        **{key: recipe.get(key) for key in ("networks", "weights", "callbacks", "trainer", "metrics")},
        "wandb": plain(ckpt.get("wandb")),
    }
    if as_json:
        return json.dumps(info, indent=1)
    lines = [f"checkpoint   {info['checkpoint']} (sha256 {info['sha256']})",
             f"module       {info['module'] or '? (written before recipes were recorded)'}, epoch {info['epoch']}, "
             f"step {info['global_step']}"]
    for role, net in (info["networks"] or {}).items():
        sparsity = f", sparsity {net['sparsity']:.1%}" if "sparsity" in net else ""
        lines.append(f"{role:<12} {_format_value(net.get('spec') or net.get('class'))}; "
                     f"{net.get('parameters', 0):,} parameters{sparsity}")
    for role, source in (info["weights"] or {}).items():
        lines.append(f"{role + ' from':<12} {source.get('path')} (sha256 {source.get('sha256')})")
    hp = {k: v for k, v in info["hyper_parameters"].items() if k not in ("model", "teacher", "student",
                                                                           "weights_sources")}
    lines.append(f"{'module args':<12} {_format_value(hp)}")
    for name, settings in (info["callbacks"] or {}).items():
        rest = {k: v for k, v in settings.items() if k != "class"}
        lines.append(f"{'callback':<12} {name}: {_format_value(rest)}")
    if info["trainer"]:
        lines.append(f"{'trainer':<12} {_format_value(info['trainer'])}")
    if info["metrics"]:
        lines.append(f"{'metrics':<12} {_format_value(info['metrics'])}")
    if info["wandb"]:
        lines.append(f"{'wandb run':<12} {info['wandb'].get('id')} in {info['wandb'].get('save_dir')}")
    return "\n".join(lines)


__all__ = ["TRAINING_CALLBACKS", "callback_settings", "callbacks_recipe", "describe_checkpoint", "file_digest",
           "network_summary", "plain", "recipe_changes", "training_recipe", "weights_source"]

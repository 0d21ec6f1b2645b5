"""Sweep grids: parse ``KEY=v1,v2`` assignments, resolve short keys against a config, expand the
cartesian product, and name each run's folder.

A short key names a setting of a LightningCLI config without its ``init_args`` levels:
``model.lr`` is ``model.init_args.lr``, ``model.teacher.weights`` is
``model.init_args.teacher.init_args.weights``, ``data.num_train`` is ``data.init_args.num_train``,
``trainer.max_epochs`` is ``trainer.max_epochs``, and ``callbacks.weight`` is the init argument
``weight`` of the one callback in ``trainer.callbacks`` that has it (``callbacks.ClassName.weight``
picks among several). A full LightningCLI flag (``--model.init_args.lr``) resolves the same way;
flags outside the config (``--ckpt_path``, ``--trainer.callbacks+=...``) pass through to ``fit``.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

SECTIONS = ("model", "data", "trainer", "callbacks")
PASSTHROUGH_ROOTS = ("ckpt_path", "optimizer", "lr_scheduler", "seed_everything")
SEED = "{seed}"


@dataclass(frozen=True)
class Target:
    """Where an override goes: a path into the config dict, or a flag passed through to ``fit``.

    Attributes:
        key: the key as the user wrote it (``callbacks.weight``, ``--model.init_args.lr``).
        path: keys/indices into the config dict; empty for a pass-through flag.
        flag: ``path`` written as a flag, for messages and the manifest (``--model.init_args.lr``); for a
            pass-through, the flag given to ``fit``.
        name: short name for folder names: the last component of ``path`` (``weight``).
    """

    key: str
    path: tuple[str | int, ...]
    flag: str
    name: str

    @property
    def passthrough(self) -> bool:
        return not self.path


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas outside brackets and quotes.

    Example:
        >>> split_values("10,100,1e3")
        ['10', '100', '1e3']
        >>> split_values("[30,45],[10,20], 'a,b'")
        ['[30,45]', '[10,20]', "'a,b'"]
    """
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    if any(not part for part in parts) or depth != 0 or quote:
        raise ValueError(f"Expected comma-separated values like `10,100,1000`, but got {text!r}.")
    return parts


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it, with ``1e-3`` read as a float.

    Example:
        >>> [parse_value(v) for v in ("100", "1e-3", "0.5", "true", "null", "[30,45]", "runs/a.ckpt")]
        [100, 0.001, 0.5, True, None, [30, 45], 'runs/a.ckpt']
    """
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``; the value may hold ``=``.

    Example:
        >>> parse_assignment("callbacks.weight=10,100", "--grid")
        ('callbacks.weight', '10,100')
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"Expected argument `{option}` to be KEY=VALUE, but got {text!r}.")
    return key.strip(), value.strip()


def _class_args(class_path: str) -> tuple[set[str], bool]:
    """Init argument names of ``class_path`` and whether it takes ``**kwargs``."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"Cannot import class_path {class_path!r} of the config: {err}") from err
    names: set[str] = set()
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else [cls]:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
    return names, True  # **kwargs all the way up: it takes any name


def _trainer_args() -> set[str]:
    from pytorch_lightning import Trainer

    return {name for name in inspect.signature(Trainer.__init__).parameters if name != "self"}


def _leaves(node: Any, prefix: str) -> list[str]:
    """Short keys of everything set under ``node`` (init_args levels dropped)."""
    if isinstance(node, Mapping):
        if "class_path" in node:
            return _leaves(node.get("init_args") or {}, prefix)
        return [key for k, v in node.items() for key in _leaves(v, f"{prefix}.{k}")] if node else [prefix]
    return [prefix]


def available_keys(config: Mapping[str, Any]) -> list[str]:
    """Every short key set in ``config`` (the ones a grid can name without a class lookup).

    Example:
        >>> available_keys({"model": {"class_path": "M", "init_args": {"lr": 0.1, "net": {"class_path": "N",
        ...     "init_args": {"width": 2}}}}, "trainer": {"max_epochs": 3, "callbacks": [
        ...     {"class_path": "a.B", "init_args": {"weight": 1.0}}]}})
        ['model.lr', 'model.net.width', 'trainer.max_epochs', 'callbacks.weight']
    """
    keys = []
    for section in ("model", "data"):
        if section in config:
            keys += _leaves(config[section], section)
    for key, value in (config.get("trainer") or {}).items():
        if key != "callbacks":
            keys += _leaves(value, f"trainer.{key}")
    for callback in _callbacks(config):
        keys += [f"callbacks.{name}" for name in (callback.get("init_args") or {})]
    return list(dict.fromkeys(keys))


def _callbacks(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    return [c for c in (callbacks if isinstance(callbacks, list) else [callbacks]) if isinstance(c, Mapping)]


def _unknown(key: str, config: Mapping[str, Any], source: str, extra: str = "") -> ValueError:
    keys = ", ".join(available_keys(config))
    return ValueError(
        f"Unknown sweep key {key!r} for config {source}. Available: {keys}{extra}; or a full LightningCLI "
        f"flag such as --model.init_args.lr.")


def _walk(node: Any, parts: Sequence[str], path: tuple, key: str, config: Mapping, source: str) -> tuple:
    """Descend ``parts`` from ``node``, entering ``init_args`` of class_path dicts implicitly."""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, Mapping) and "class_path" in node:
            if part == "init_args":
                continue
            if part == "class_path" and last:
                return (*path, "class_path")
            init_args = node.get("init_args") or {}
            if part not in init_args:
                if not last:
                    raise _unknown(key, config, source)
                names, any_kw = _class_args(node["class_path"])
                if part not in names and not any_kw:
                    raise _unknown(key, config, source, f" (or an init argument of {node['class_path']}: "
                                                        f"{', '.join(sorted(names))})")
                return (*path, "init_args", part)
            node, path = init_args[part], (*path, "init_args", part)
        elif isinstance(node, Mapping) and part in node:
            node, path = node[part], (*path, part)
        else:
            raise _unknown(key, config, source)
    return path


def resolve_key(config: Mapping[str, Any], key: str, source: str = "") -> Target:
    """Resolve a sweep key (short or a full ``--flag``) against a loaded config.

    Args:
        config: the config file's content (LightningCLI layout: ``model``, ``data``, ``trainer``).
        key: ``callbacks.weight``, ``model.lr``, ``data.num_train``, ``trainer.max_epochs``,
            ``model.teacher.weights``, ``callbacks.AttributionMatching.weight`` or a flag
            ``--model.init_args.lr``.
        source: the config's name, for messages.

    Raises:
        ValueError: an unknown key (the message lists the available ones), or a callback key that
            several callbacks take.

    Example:
        >>> config = {"model": {"class_path": "M", "init_args": {"lr": 0.1}},
        ...           "trainer": {"max_epochs": 3, "callbacks": [{"class_path": "x.A", "init_args": {"weight": 1}},
        ...                                                      {"class_path": "x.B"}]}}
        >>> resolve_key(config, "callbacks.weight")
        Target(key='callbacks.weight', path=('trainer', 'callbacks', 0, 'init_args', 'weight'), flag='--trainer.callbacks.0.init_args.weight', name='weight')
        >>> resolve_key(config, "--model.init_args.lr").path
        ('model', 'init_args', 'lr')
        >>> resolve_key(config, "--ckpt_path").passthrough
        True
    """
    bare = key[2:] if key.startswith("--") else key
    parts = bare.split(".")
    if bare.split(".")[0] == "seed_everything" and not key.startswith("--"):
        raise ValueError(f"Sweep key {key!r}: give seeds with `--seeds 0,1,2`, not as a key.")
    if key.startswith("--") and (parts[0] in PASSTHROUGH_ROOTS or re.search(r"[+=\[\]]", bare)):
        return Target(key, (), key, parts[-1])
    if parts[0] not in SECTIONS or len(parts) < 2 or not all(parts):
        raise _unknown(key, config, source)
    if parts[0] == "callbacks":
        path = _resolve_callback(config, parts[1:], key, source)
    elif parts[0] == "trainer":
        trainer = config.get("trainer") or {}
        if parts[1] in trainer or len(parts) > 2:
            path = _walk(trainer, parts[1:], ("trainer",), key, config, source)
        elif parts[1] in _trainer_args():
            path = ("trainer", parts[1])
        else:
            raise _unknown(key, config, source, " (or any pytorch_lightning.Trainer argument)")
    else:
        if parts[0] not in config:
            raise _unknown(key, config, source)
        path = _walk(config[parts[0]], parts[1:], (parts[0],), key, config, source)
    return Target(key, path, "--" + ".".join(str(p) for p in path), str(path[-1]))


def _resolve_callback(config: Mapping[str, Any], parts: Sequence[str], key: str, source: str) -> tuple:
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    indexed = [(i, c) for i, c in enumerate(callbacks if isinstance(callbacks, list) else [callbacks])
               if isinstance(c, Mapping) and "class_path" in c]
    if len(parts) >= 2 and any(c["class_path"].rpartition(".")[2] == parts[0] for _, c in indexed):
        indexed = [(i, c) for i, c in indexed if c["class_path"].rpartition(".")[2] == parts[0]]
        parts = parts[1:]
    name = parts[0]
    found = [(i, c) for i, c in indexed if name in (c.get("init_args") or {})]
    if not found:
        found = [(i, c) for i, c in indexed if name in _class_args(c["class_path"])[0]]
    if not found:
        classes = ", ".join(c["class_path"] for _, c in indexed) or "none"
        raise _unknown(key, config, source, f" (or an init argument of a callback: {classes})")
    if len(found) > 1:
        classes = ", ".join(f"{c['class_path']} (#{i})" for i, c in found)
        raise ValueError(f"Sweep key {key!r} is ambiguous in config {source}: callbacks {classes} all take "
                         f"{name!r}; write callbacks.<ClassName>.{name}.")
    index, callback = found[0]
    return _walk(callback, parts, ("trainer", "callbacks", index), key, config, source)


def get_path(config: Any, path: Sequence[str | int], default: Any = None) -> Any:
    """The value at ``path`` in nested dicts/lists, or ``default``.

    Example:
        >>> get_path({"a": [{"b": 1}]}, ("a", 0, "b")), get_path({"a": {}}, ("a", "c"), 7)
        (1, 7)
    """
    node = config
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return default
    return node


def set_path(config: dict, path: Sequence[str | int], value: Any) -> None:
    """Set ``value`` at ``path``, creating missing dict levels (``init_args`` included).

    Example:
        >>> config = {"model": {"class_path": "M"}}
        >>> set_path(config, ("model", "init_args", "lr"), 0.01); config
        {'model': {'class_path': 'M', 'init_args': {'lr': 0.01}}}
    """
    node = config
    for part in path[:-1]:
        if isinstance(node, dict) and (part not in node or node[part] is None):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def expand_grid(grid: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[tuple[str, str], ...]]:
    """The cartesian product of ``[(key, values), ...]``, first key slowest, in the given orders.

    Raises:
        ValueError: a key given twice.

    Example:
        >>> expand_grid([("callbacks.weight", ["10", "100"]), ("model.lr", ["0.1", "0.01"])])
        ... # doctest: +NORMALIZE_WHITESPACE
        [(('callbacks.weight', '10'), ('model.lr', '0.1')), (('callbacks.weight', '10'), ('model.lr', '0.01')),
         (('callbacks.weight', '100'), ('model.lr', '0.1')), (('callbacks.weight', '100'), ('model.lr', '0.01'))]
        >>> expand_grid([])
        [()]
    """
    keys = [key for key, _ in grid]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"Expected each `--grid` key once, but got {', '.join(twice)} more than once.")
    return [tuple(zip(keys, values)) for values in itertools.product(*(values for _, values in grid))]


def folder_part(name: str, value: str) -> str:
    """One folder level ``name=value``, safe on every file system (``/``, spaces and the like -> ``_``).

    Example:
        >>> folder_part("weight", "100"), folder_part("weights", "runs/t/last.ckpt")
        ('weight=100', 'weights=runs_t_last.ckpt')
    """
    safe = re.sub(r"[^A-Za-z0-9._+\-=,\[\]]+", "_", str(value)).strip("_") or "_"
    return f"{name}={safe}"


def run_name(config_name: str, point: Sequence[tuple[str, str]], seed: int) -> str:
    """A run's folder, relative to the sweep's ``--out``: config, one level per grid key, seed.

    ``point`` holds (short name, value as written) pairs, in grid order.

    Example:
        >>> run_name("distill_div8_sswa", [("weight", "100")], 0)
        'distill_div8_sswa/weight=100/seed=0'
        >>> run_name("teacher", [], 2)
        'teacher/seed=2'
    """
    return "/".join([config_name, *(folder_part(name, value) for name, value in point), f"seed={seed}"])


def short_names(targets: Sequence[Target]) -> list[str]:
    """Folder names for the grid's keys: the last path component, or the whole key where two collide.

    Example:
        >>> a = Target("model.lr", ("model", "init_args", "lr"), "--model.init_args.lr", "lr")
        >>> b = Target("model.teacher.lr", ("model", "init_args", "teacher", "init_args", "lr"), "", "lr")
        >>> short_names([a]), short_names([a, b])
        (['lr'], ['model.lr', 'model.teacher.lr'])
    """
    names = [t.name for t in targets]
    return [t.name if names.count(t.name) == 1 else t.key.lstrip("-") for t in targets]

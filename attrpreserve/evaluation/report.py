"""Report I/O of an evaluation result: the table, ``results.json``/``results.csv`` with the
run's provenance, and the logger (a ``wandb.Table``, flat ``{key}/...`` numbers, a run summary).

A result is what :func:`attrpreserve.evaluate.evaluate` returns (or :func:`load_results` reads):
``{"metrics", "methods", "baselines", "protocol", "provenance", ...}``; nothing here scores.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from attrpreserve.attribution.methods import get_method

METHOD_FIELDS = ("auc", "point_acc", "cos", "l2", "num_pairs", "num_skipped")
EXTRA_FIELDS = ("energy", "point_acc_difficult", "num_pairs_difficult", "deletion", "insertion")
CI_FIELDS = ("point_acc_ci", "auc_ci")
CSV_FIELDS = ("method", "map", "map_image", "f1", "auc", "point_acc", "cos", "l2", "num_pairs", "num_skipped",
              "num_images", "protocol", "row", *EXTRA_FIELDS, "point_acc_ci_low", "point_acc_ci_high", "auc_ci_low",
              "auc_ci_high")


# -- provenance -----------------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    """Versions of the packages whose code computes the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("attrpreserve", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "captum", "zennit"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _network_provenance(net: nn.Module | None) -> dict[str, Any] | None:
    if net is None:
        return None
    from attrpreserve.models import model_spec

    return {"class": type(net).__name__, "spec": model_spec(net),
            "parameters": sum(p.numel() for p in net.parameters())}


def _method_settings(name: str, knobs: Mapping[str, Any], net: nn.Module | None) -> dict[str, Any]:
    """The method's knobs, with its layer as given and as the dotted module name it resolved to."""
    from attrpreserve.models.layers import resolve_layer_name

    settings = {k: v for k, v in knobs.items()}
    rule = get_method(name).layer_rule
    if rule is not None and net is not None:
        given = knobs.get("layer") or rule.default_layer or getattr(net, "default_attribution_layer", None)
        settings["layer"] = given
        try:
            settings["layer_module"] = resolve_layer_name(net, given)
        except ValueError:
            settings["layer_module"] = None
    return settings


def evaluation_provenance(model: nn.Module, teacher: nn.Module | None, names: list[str],
                          kwargs: dict[str, dict[str, Any]], teacher_kwargs: dict[str, dict[str, Any]],
                          max_images: int | None, max_batches: int | None) -> dict[str, Any]:
    """What ``result["provenance"]`` starts from: the networks, each method's knobs and resolved
    layer (the teacher's too), the image/batch limits and :func:`package_versions`."""
    return {
        "model": _network_provenance(model),
        "teacher": _network_provenance(teacher),
        "methods": {name: _method_settings(name, kwargs[name], model) for name in names},
        "teacher_methods": ({name: _method_settings(name, teacher_kwargs[name], teacher) for name in names}
                            if teacher is not None else None),
        "max_images": max_images,
        "max_batches": max_batches,
        "versions": package_versions(),
    }


# -- table, files, logger -------------------------------------------------------------------------
def _cell(value: Any, scale: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _rows(result: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``(name, kind, entry)`` of every row: the methods, then the model-free baselines."""
    return ([(n, "method", e) for n, e in result["methods"].items()]
            + [(n, "baseline", e) for n, e in result.get("baselines", {}).items()])


def _interval(entry: Mapping[str, Any], key: str) -> str:
    low, high = entry.get(key) or (None, None)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "-"
    return f"{100 * low:.1f}-{100 * high:.1f}"


def _table_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "mAP", "F1", "AUC", "point acc", "cos", "l2", "pairs", "energy", "point acc 95% CI"]
    metrics = result["metrics"]
    rows = []
    for name, kind, entry in _rows(result):
        rows.append([
            name if kind == "method" else f"{name} (baseline)", _cell(metrics.get("map"), 100, 2),
            _cell(metrics.get("f1"), 100, 2), _cell(entry["auc"], 100, 2), _cell(entry["point_acc"], 100, 2),
            _cell(entry["cos"], 1, 3), _cell(entry["l2"], 1, 2), str(entry["num_pairs"]),
            _cell(entry.get("energy"), 100, 2), _interval(entry, "point_acc_ci"),
        ])
    if "faithfulness" in result:  # deletion (lower is better) and insertion AUCs, random order last
        header += ["deletion", "insertion"]
        for row, (_, _, entry) in zip(rows, _rows(result)):
            row += [_cell(entry.get("deletion"), 100, 2), _cell(entry.get("insertion"), 100, 2)]
        random = result["faithfulness"]["random"]
        rows.append(["random order", *["" for _ in header[1:-2]], _cell(random["deletion"], 100, 2),
                     _cell(random["insertion"], 100, 2)])
    return header, rows


def format_table(result: Mapping[str, Any], plain: bool = False) -> str:
    """The result as a table: one row per method, then one per model-free baseline (``center``:
    what guessing the image centre scores); mAP (per-class VOC), F1, AUC and point accuracy in
    percent, cos and l2 to the teacher ("-" where not computed), scored pairs, energy share in
    percent and the bootstrap 95% interval of the point accuracy.

    Args:
        result: what :func:`evaluate` returned (or :func:`load_results` read).
        plain: plain aligned text instead of a rich table.

    Example:
        >>> nan = float("nan")
        >>> result = {"metrics": {"map": 0.9, "f1": 0.75}, "protocol": {"name": "paper"},
        ...           "methods": {"gradcam": {"auc": 0.8812, "point_acc": 0.8, "cos": nan, "l2": nan,
        ...                                   "num_pairs": 10, "num_skipped": 2, "energy": 0.5,
        ...                                   "point_acc_ci": [0.6, 0.95]}},
        ...           "baselines": {"center": {"auc": 0.7, "point_acc": 0.5, "cos": nan, "l2": nan,
        ...                                    "num_pairs": 10, "num_skipped": 2}}}
        >>> print(format_table(result, plain=True))
        method             mAP    F1     AUC    point acc  cos  l2  pairs  energy  point acc 95% CI
        gradcam            90.00  75.00  88.12  80.00      -    -   10     50.00   60.0-95.0
        center (baseline)  90.00  75.00  70.00  50.00      -    -   10     -       -
    """
    header, rows = _table_rows(result)
    if plain:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        return "\n".join(lines)
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    protocol = result.get("protocol", {}).get("name", "?")
    table = Table(title=f"attribution evaluation (protocol {protocol})")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    buffer = StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue().rstrip("\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def save_results(result: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.json`` (the whole result, nan as ``null``) and ``results.csv`` (one row per
    method, then per baseline, column ``row``; nan as ``nan``) into ``out_dir`` (created).

    Returns:
        The two paths.

    Example:
        >>> import tempfile
        >>> result = {"metrics": {"map": 0.5, "map_image": 0.6, "f1": 0.4, "num_images": 2},
        ...           "protocol": {"name": "paper"},
        ...           "methods": {"gradcam": {"auc": 0.75, "point_acc": 1.0, "cos": float("nan"),
        ...                                   "l2": float("nan"), "num_pairs": 3, "num_skipped": 1}}}
        >>> folder = tempfile.mkdtemp()
        >>> json_path, csv_path = save_results(result, folder)
        >>> json_path.name, csv_path.read_text().splitlines()[1]
        ('results.json', 'gradcam,0.5,0.6,0.4,0.75,1.0,nan,nan,3,1,2,paper,method,,,,,,,,,')
        >>> math.isnan(load_results(folder)["methods"]["gradcam"]["cos"])
        True
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = folder / "results.json", folder / "results.csv"
    json_path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")
    metrics = result["metrics"]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for name, kind, entry in _rows(result):
            low_high = [v for key in CI_FIELDS for v in (entry.get(key) or (None, None))]
            writer.writerow([
                name, metrics.get("map"), metrics.get("map_image"), metrics.get("f1"),
                *(entry[key] for key in METHOD_FIELDS), metrics.get("num_images"),
                result.get("protocol", {}).get("name", ""), kind, *(entry.get(key) for key in EXTRA_FIELDS),
                *low_high,
            ])
    return json_path, csv_path


def load_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``results.json`` written by :func:`save_results` (``null`` numbers back to nan).

    Raises:
        FileNotFoundError: no ``results.json`` in ``out_dir``.
    """
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"Expected {str(path)!r} (written by save_results), but it does not exist.")
    result = json.loads(path.read_text())
    nan = float("nan")
    for key in ("map", "map_image", "f1"):
        if key in result["metrics"] and result["metrics"][key] is None:
            result["metrics"][key] = nan
    for entry in [*result["methods"].values(), *result.get("baselines", {}).values()]:
        for key in ("auc", "point_acc", "cos", "l2", "energy", "point_acc_difficult", "deletion", "insertion"):
            if key in entry and entry[key] is None:
                entry[key] = nan
        for key in CI_FIELDS:
            if key in entry:
                entry[key] = [nan if v is None else v for v in entry[key]]
    random = result.get("faithfulness", {}).get("random", {})
    for key in random:
        random[key] = nan if random[key] is None else random[key]
    for row in result.get("per_class", []):
        for key in ("point_acc", "auc", "energy"):
            if row.get(key, 0) is None:
                row[key] = nan
    return result


def log_results(logger: Any, result: Mapping[str, Any], key: str = "evaluate") -> None:
    """Send the result to a Lightning logger: a ``wandb.Table`` for a ``WandbLogger``
    (``logger.log_table``), otherwise the finite numbers through ``log_metrics`` as
    ``{key}/map``, ``{key}/{method}/auc``, ...

    Raises:
        ValueError: ``logger`` has neither ``log_table`` (WandbLogger) nor ``log_metrics``.
    """
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        header, _ = _table_rows(result)
        metrics = result["metrics"]
        data = [[name if kind == "method" else f"{name} (baseline)", metrics.get("map"), metrics.get("f1"),
                 entry["auc"], entry["point_acc"], entry["cos"], entry["l2"], entry["num_pairs"], entry.get("energy"),
                 _interval(entry, "point_acc_ci")] for name, kind, entry in _rows(result)]
        if "faithfulness" in result:
            random = result["faithfulness"]["random"]
            data = [row + [entry.get("deletion"), entry.get("insertion")] for row, (_, _, entry)
                    in zip(data, _rows(result))]
            data.append(["random order", *[None] * (len(header) - 3), random["deletion"], random["insertion"]])
        logger.log_table(key=f"{key}/table", columns=header, data=[[_jsonable(v) for v in row] for row in data])
        return
    if not callable(getattr(logger, "log_metrics", None)):
        raise ValueError(f"Expected argument `logger` to be a Lightning logger (log_metrics), but got "
                         f"{type(logger).__name__}.")
    logger.log_metrics(summary_values(result, key))
    if callable(getattr(logger, "save", None)):
        logger.save()


def summary_values(result: Mapping[str, Any], key: str = "evaluate") -> dict[str, float]:
    """The finite numbers of a result as flat ``{key}/map``, ``{key}/{method}/point_acc``, ... entries
    (baselines as ``{key}/{baseline}/...``; intervals as ``..._ci_low``/``..._ci_high``).

    Example:
        >>> summary_values({"metrics": {"map": 0.5, "num_images": 4},
        ...                 "methods": {"gradcam": {"auc": 0.9, "cos": float("nan"), "num_pairs": 3}}})
        {'evaluate/map': 0.5, 'evaluate/num_images': 4.0, 'evaluate/gradcam/auc': 0.9, 'evaluate/gradcam/num_pairs': 3.0}
    """
    flat: dict[str, Any] = {f"{key}/{name}": value for name, value in result["metrics"].items()}
    for method, _, entry in _rows(result):
        for name, value in entry.items():
            if isinstance(value, (list, tuple)) and len(value) == 2:
                flat.update({f"{key}/{method}/{name}_low": value[0], f"{key}/{method}/{name}_high": value[1]})
            else:
                flat[f"{key}/{method}/{name}"] = value
    return {k: float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))}


def log_summary(logger: Any, result: Mapping[str, Any], key: str = "evaluate") -> None:
    """Put the result's numbers into a ``WandbLogger`` run's summary (what a dashboard's run table
    shows and filters on) and its protocol and provenance into the run's config."""
    experiment = logger.experiment
    experiment.summary.update(summary_values(result, key))
    experiment.config.update({key.replace("/", "_"): _jsonable({"protocol": result.get("protocol"),
                                                                 "provenance": result.get("provenance")})},
                             allow_val_change=True)


__all__ = [
    "CSV_FIELDS", "evaluation_provenance", "format_table", "load_results", "log_results", "log_summary",
    "package_versions", "save_results", "summary_values",
]

"""The sweep's plot: point accuracy and cos to the teacher against the swept value, one line per
config arm (and per value of any further grid key), error bars the standard deviation over
seeds, references as horizontal lines. Without a grid the x axis is the config name."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attrpreserve.study.aggregate import summarize

PANELS = (("point_acc", "point accuracy (%)"), ("cos", "cos to the teacher's maps"))


def _numbers(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def plot_sweep(rows: Sequence[Mapping[str, Any]], grid_keys: Sequence[str], path: str | os.PathLike,
               references: Mapping[str, Mapping[Any, Mapping[str, float]]] | None = None,
               title: str = "") -> Path:
    """Write the plot (PNG, matplotlib's Agg canvas; pyplot's global state is left alone).

    Args:
        rows: :func:`attrpreserve.study.aggregate.aggregate` rows.
        grid_keys: the grid's short names; the first is the x axis (log scale when its values are
            positive numbers spanning 10x or more).
        path: the PNG file.
        references: ``{name: {seed or None: metric values}}``, drawn at their mean (band: ± std).
        title: figure title.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    axes = figure.subplots(1, len(PANELS))
    x_key = grid_keys[0] if grid_keys else None
    series: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        rest = [f"{k}={row['grid'].get(k, '')}" for k in grid_keys[1:]]
        label = row["config"] if x_key is not None else "runs"
        series.setdefault(", ".join([label, *rest]), []).append(row)
    if x_key is not None:
        labels = list(dict.fromkeys(str(row["grid"].get(x_key, "")) for row in rows))
        numbers = _numbers(labels)
        position = dict(zip(labels, numbers)) if numbers is not None else {v: i for i, v in enumerate(labels)}
        log = numbers is not None and min(numbers) > 0 and max(numbers) >= 10 * min(numbers)
    else:
        labels = list(dict.fromkeys(row["config"] for row in rows))
        numbers, log = None, False
        position = {v: i for i, v in enumerate(labels)}
    for axis, (metric, ylabel) in zip(axes, PANELS):
        for name, members in series.items():
            keys = [str(m["grid"].get(x_key, "")) if x_key is not None else m["config"] for m in members]
            order = sorted(range(len(members)), key=lambda i: position[keys[i]])
            xs = [position[keys[i]] for i in order]
            means = [members[i][metric]["mean"] for i in order]
            errors = [members[i][metric]["std"] if math.isfinite(members[i][metric]["std"]) else 0.0 for i in order]
            if not any(math.isfinite(m) for m in means):
                continue
            axis.errorbar(xs, means, yerr=errors, marker="o", capsize=4,
                          linestyle="-" if x_key is not None else "none", label=name)
        for k, (name, reference) in enumerate((references or {}).items()):
            summary = summarize({seed: values[metric] for seed, values in reference.items()})
            if not math.isfinite(summary["mean"]):
                continue
            color = f"C{(len(series) + k) % 10}"
            axis.axhline(summary["mean"], linestyle="--", color=color, label=name)
            if math.isfinite(summary["std"]):
                axis.axhspan(summary["mean"] - summary["std"], summary["mean"] + summary["std"], color=color,
                             alpha=0.12)
        if log:
            axis.set_xscale("log")
        if numbers is None:
            axis.set_xticks(list(position.values()), list(position.keys()), rotation=15)
        elif x_key is not None:
            axis.set_xticks(list(position.values()), list(position.keys()))
        axis.set_xlabel(x_key or "config")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out

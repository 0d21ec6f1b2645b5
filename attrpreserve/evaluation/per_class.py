"""Per-class localisation results: rows, ``per_class.csv`` and a bar plot ``per_class.png``."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PER_CLASS_FIELDS = ("method", "class", "name", "num_pairs", "point_acc", "auc", "energy")


def _class_means(values: Tensor, classes: Tensor, num_classes: int) -> tuple[list[float], list[int]]:
    """Mean of the finite values per class (nan where a class has none) and the pair counts."""
    finite = torch.isfinite(values)
    cls = classes.long()
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, cls[finite], values[finite].double())
    counts = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, cls[finite], torch.ones(int(finite.sum()),
                                                                                                dtype=torch.float64))
    pairs = torch.bincount(cls, minlength=num_classes).tolist()
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.tensor(math.nan, dtype=torch.float64))
    return means.tolist(), pairs


def per_class_rows(records: Mapping[str, Mapping[str, Tensor]], classes: Tensor, num_classes: int,
                   class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (method, class): pairs scored, point accuracy, mean AUC and energy share.

    Args:
        records: per method, ``{"hit", "auc", "energy"}`` per-pair vectors (see
            :func:`~attrpreserve.evaluation.records.pair_values`).
        classes: ``(N,)`` class of each pair (the same pairs for every method).
        num_classes: K.
        class_names: K names (default: the class indices).

    Example:
        >>> rows = per_class_rows({"gradcam": {"hit": torch.tensor([1.0, 0.0, 1.0]),
        ...                                    "auc": torch.tensor([0.5, float("nan"), 1.0]),
        ...                                    "energy": torch.tensor([0.2, 0.4, 0.6])}},
        ...                       torch.tensor([0, 0, 1]), 2, ["cat", "dog"])
        >>> [(r["name"], r["num_pairs"], r["point_acc"], r["auc"], round(r["energy"], 2)) for r in rows]
        [('cat', 2, 0.5, 0.5, 0.3), ('dog', 1, 1.0, 1.0, 0.6)]
    """
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"Expected argument `class_names` to hold {num_classes} names, but got {len(names)}.")
    rows = []
    for method, values in records.items():
        point, pairs = _class_means(values["hit"], classes, num_classes)
        auc, _ = _class_means(values["auc"], classes, num_classes)
        energy, _ = _class_means(values["energy"], classes, num_classes)
        for c in range(num_classes):
            rows.append({"method": method, "class": c, "name": names[c], "num_pairs": pairs[c], "point_acc": point[c],
                         "auc": auc[c], "energy": energy[c]})
    return rows


def write_per_class(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``per_class.csv`` (nan as ``nan``) and ``per_class.png`` (point accuracy and AUC per
    class, one bar per method) into ``out_dir`` (created). Returns the two paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / "per_class.csv", folder / "per_class.png"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_CLASS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, png_path)
    return csv_path, png_path


def _plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    width = 0.8 / max(len(methods), 1)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.5 * len(names) * max(1, len(methods)) ** 0.5), 6),
                             sharex=True)
    for axis, key, label in ((axes[0], "point_acc", "point accuracy"), (axes[1], "auc", "AUC")):
        for m, method in enumerate(methods):
            values = [next(r[key] for r in rows if r["method"] == method and r["name"] == n) for n in names]
            axis.bar([i + m * width for i in range(len(names))], [0.0 if math.isnan(v) else v for v in values],
                     width=width, label=method)
        axis.set_ylabel(label)
        axis.set_ylim(0, 1)
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=60, ha="right")
    axes[0].legend(fontsize="small", ncol=min(len(methods), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["PER_CLASS_FIELDS", "per_class_rows", "write_per_class"]

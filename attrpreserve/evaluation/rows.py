"""The metrics of one table row (an attribution method or a baseline) and the numbers they give.

Every row is scored on the same pairs: point accuracy (the protocol's pointing game), AUC,
energy share, with a teacher cos/l2, under the TorchRay protocol the accuracy on the EBP
difficult subset, and per-pair records for bootstrap intervals and per-class tables. All states
are torchmetrics states, so they sync across processes at ``compute()``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric

from attrpreserve.evaluation.bootstrap import bootstrap_ci
from attrpreserve.evaluation.pairs import PairTargets
from attrpreserve.evaluation.records import PairRecords, pair_values
from attrpreserve.metrics import EnergyPointingGame, MapSimilarity, MaskAUROC, PointingGame, TorchRayPointingGame

RECORD_FIELDS = ("hit", "auc", "energy")


def compute_quietly(metric: Any) -> Any:
    """``metric.compute()`` without torchmetrics' warnings (an empty metric is reported once, by us)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric.compute()


def faithfulness_metrics() -> nn.ModuleDict:
    """Synced means of the deletion and insertion AUCs."""
    return nn.ModuleDict({mode: MeanMetric(nan_strategy="ignore") for mode in ("deletion", "insertion")})


def faithfulness_values(metrics: nn.ModuleDict | None) -> dict[str, float]:
    """``{"deletion", "insertion"}`` means (synced; nan without metrics or values)."""
    if metrics is None:
        return {"deletion": math.nan, "insertion": math.nan}
    return {mode: float(compute_quietly(metric)) for mode, metric in metrics.items()}


def records_of(records: PairRecords) -> dict[str, Tensor]:
    """``records.compute()`` as 1-D CPU vectors (torchmetrics squeezes a one-pair result to 0-d)."""
    return {k: v.reshape(-1).cpu() for k, v in compute_quietly(records).items()}


class RowMetrics(nn.Module):
    """The metrics of one row, behaving like a ``MetricCollection``: ``update``, ``compute``,
    ``reset`` and ``.to(device)`` reach every metric.

    Args:
        tolerance: pointing-game radius in pixels.
        average: ``"micro"`` (point accuracy over maps) or ``"class"`` (TorchRay: per class, then
            the mean over all ``num_classes`` classes; adds the difficult-subset accuracy).
        num_classes: K.
        teacher: keep cos/l2 to a teacher's maps.
        faithfulness: keep the mean deletion/insertion AUCs.

    Example:
        >>> row = RowMetrics(tolerance=0, average="micro", num_classes=2, teacher=False)
        >>> maps = torch.tensor([[[0.9, 0.1], [0.2, 0.4]]])
        >>> row.update(maps, PairTargets(maps > 0.5, None, torch.tensor([False])), torch.tensor([0]))
        >>> {k: row.compute()[k] for k in ("point_acc", "auc")}
        {'point_acc': 1.0, 'auc': 1.0}
    """

    def __init__(self, tolerance: float, average: str, num_classes: int, teacher: bool,
                 faithfulness: bool = False) -> None:
        super().__init__()
        self.tolerance, self.average, self.num_classes = tolerance, average, num_classes
        torchray = average == "class"
        self.pointing = (TorchRayPointingGame(num_classes, tolerance, validate_args=False) if torchray
                         else PointingGame(tolerance, average, validate_args=False))
        self.difficult = TorchRayPointingGame(num_classes, tolerance, validate_args=False) if torchray else None
        self.auroc = MaskAUROC(validate_args=False)
        self.energy = EnergyPointingGame(validate_args=False)
        self.similarity = MapSimilarity(validate_args=False) if teacher else None
        self.records = PairRecords(RECORD_FIELDS)
        self.faithfulness = faithfulness_metrics() if faithfulness else None

    def update(self, maps: Tensor, targets: PairTargets, classes: Tensor, teacher_maps: Tensor | None = None) -> None:
        """Score ``[N, H, W]`` maps (image resolution) of the pairs against ``targets``."""
        scored = targets.frame_maps(maps)
        objects, ignore = targets.objects, targets.ignore
        self.pointing.update(scored, objects, classes=classes, ignore=ignore)
        self.auroc.update(scored, objects, ignore=ignore)
        self.energy.update(scored, objects, ignore=ignore)
        self.records.update(**pair_values(scored, objects, ignore, self.tolerance))
        if self.difficult is not None and bool(targets.difficult.any()):
            d = targets.difficult
            self.difficult.update(scored[d], objects[d], classes[d], None if ignore is None else ignore[d])
        if self.similarity is not None and teacher_maps is not None:
            self.similarity.update(maps, teacher_maps.to(maps.device))

    def update_faithfulness(self, aucs: dict[str, Tensor]) -> None:
        """Add per-pair ``deletion``/``insertion`` AUCs (see :mod:`attrpreserve.evaluation.faithfulness`)."""
        if self.faithfulness is not None:
            for mode, values in aucs.items():
                self.faithfulness[mode].update(values)

    def compute(self) -> dict[str, float]:
        """The synced ``point_acc``, ``auc``, ``energy``, ``cos``/``l2`` (nan without a teacher),
        ``point_acc_difficult`` (nan outside TorchRay's averaging) and ``deletion``/``insertion``
        (nan without faithfulness)."""
        nan = math.nan
        values = {"auc": float(compute_quietly(self.auroc)), "point_acc": float(compute_quietly(self.pointing)),
                  "energy": float(compute_quietly(self.energy)), "cos": nan, "l2": nan,
                  "point_acc_difficult": nan, **faithfulness_values(self.faithfulness)}
        if self.difficult is not None:
            values["point_acc_difficult"] = float(compute_quietly(self.difficult))
        if self.similarity is not None:
            sim = compute_quietly(self.similarity)
            values["cos"], values["l2"] = float(sim["cos"]), float(sim["l2"])
        return values

    def reset(self) -> None:
        """Reset every metric of the row."""
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()

    def entry(self, scored: bool, classes: Tensor, difficult: Tensor, resamples: int, seed: int,
              order: Tensor | None = None) -> dict[str, Any]:
        """The row's numbers (nan where nothing was scored). ``classes``/``difficult``: the synced
        per-pair class and difficult flag, already put in ``order``, the permutation of the
        gathered records that gives one process's order (so intervals do not depend on it)."""
        nan = math.nan
        entry: dict[str, Any] = {"auc": nan, "point_acc": nan, "cos": nan, "l2": nan, "energy": nan,
                                 "point_acc_difficult": nan, "num_pairs_difficult": int(difficult.sum()),
                                 "point_acc_ci": [nan, nan], "auc_ci": [nan, nan],
                                 **faithfulness_values(self.faithfulness)}
        if not scored:
            return entry
        entry.update(self.compute())
        if not entry["num_pairs_difficult"]:  # the difficult metric saw no pair (on any process)
            entry["point_acc_difficult"] = nan
        if resamples:
            values = self.record_values()
            if order is not None:
                values = {key: value[order] for key, value in values.items()}
            per_class = self.average == "class"
            entry["point_acc_ci"] = list(bootstrap_ci(values["hit"], classes if per_class else None,
                                                      self.num_classes if per_class else None, resamples, seed=seed))
            entry["auc_ci"] = list(bootstrap_ci(values["auc"], resamples=resamples, seed=seed))
        return entry

    def record_values(self) -> dict[str, Tensor]:
        """Per-pair ``hit``/``auc``/``energy`` over all batches (and processes), on the CPU."""
        return records_of(self.records)


__all__ = [
    "RECORD_FIELDS", "RowMetrics", "compute_quietly", "faithfulness_metrics", "faithfulness_values", "records_of",
]

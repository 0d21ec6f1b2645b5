"""``MaskAUROC``: a torchmetrics Metric around ``functional.mask_auroc``."""

from typing import Any, Optional

import torch
from torch import Tensor

from attrpreserve.metrics._base import UnitScoreMetric
from attrpreserve.metrics.functional._checks import _check_validate_args
from attrpreserve.metrics.functional.mask_auroc import (
    _mask_auroc_arg_validation,
    _mask_auroc_compute,
    _mask_auroc_format,
    _mask_auroc_tensor_validation,
    _mask_auroc_update,
)


class MaskAUROC(UnitScoreMetric):
    """Pixel ROC-AUC of each heatmap against its object mask, averaged over maps.

    Each map's AUC is exact (average ranks for ties, as sklearn's ``roc_auc_score``), computed
    over the pixels not marked in ``ignore``, and finished inside ``update``: the state is a sum
    and two counts, so nothing grows over an epoch. Maps whose valid pixels are all object or all
    background have no AUC; they are skipped and counted in ``num_skipped`` (under DDP this rank's
    count until synced: read it inside ``with metric.sync_context():``).

    As input to ``forward`` and ``update``:

    - ``heatmaps``: ``(N, H, W)`` or ``(N, 1, H, W)`` real-valued maps (higher = more object).
    - ``masks``: same shape, bool or {0, 1}: the object pixels (positives).
    - ``ignore``: optional, same shape, bool or {0, 1}: pixels to leave out (VOC void).

    As output of ``forward`` (the batch) and ``compute`` (all batches): a scalar float32 mean AUC.

    Args:
        normalize: min-max each map over its valid pixels before the AUC, as the paper does. AUC
            depends only on the order of the pixels, so the result is the same either way.
        zero_division: value returned, with a warning, when no map had an AUC (default nan).
        validate_args: check shapes and values on every update.
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction if ``normalize``/``validate_args`` are not bools or
            ``zero_division`` not a float; on update, with ``validate_args``, if the shapes differ,
            masks/ignore are not binary, or heatmaps hold NaN/inf.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics import MaskAUROC
        >>> heatmaps = torch.tensor([[[0.9, 0.1], [0.2, 0.4]], [[0.5, 0.5], [0.5, 0.5]]])
        >>> masks = torch.tensor([[[1, 0], [1, 0]], [[1, 1], [1, 1]]])  # second: no background
        >>> metric = MaskAUROC()
        >>> metric(heatmaps, masks)
        tensor(0.7500)
        >>> metric(heatmaps[:1], masks[:1], ignore=torch.tensor([[[0, 0], [0, 1]]]))
        tensor(1.)
        >>> metric.compute(), metric.num_skipped
        (tensor(0.8750), tensor(1))
    """

    auc_sum: Tensor
    count: Tensor
    num_skipped: Tensor

    def __init__(
        self,
        normalize: bool = False,
        zero_division: float = float("nan"),
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_validate_args(validate_args)
        _mask_auroc_arg_validation(normalize, zero_division)
        self.normalize = normalize
        self.zero_division = zero_division
        self.validate_args = validate_args
        self.add_state("auc_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_skipped", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor, ignore: Optional[Tensor] = None) -> None:
        """Add a batch of maps (see the class docstring for shapes)."""
        if self.validate_args:
            _mask_auroc_tensor_validation(heatmaps, masks, ignore)
        scores, masks, ignore = _mask_auroc_format(heatmaps, masks, ignore)
        auc_sum, count, num_skipped = _mask_auroc_update(scores, masks, ignore, self.normalize)
        self._add_to_states(auc_sum=auc_sum, count=count, num_skipped=num_skipped)

    def compute(self) -> Tensor:
        """Mean AUC over all maps counted since the last reset."""
        return _mask_auroc_compute(self.auc_sum, self.count, self.zero_division)

"""Predictive metrics: per-image AP (the reference code's "mAP") and a ready-made collection.

Which mAP is which:

- ``map``: the standard per-class VOC mAP, torchmetrics'
  ``MultilabelAveragePrecision(num_labels, average="macro")`` (exact, not binned).
- ``map_image``: ``PerImageAveragePrecision``, AP of ranking each image's labels, averaged over
  images; this is what the paper's reference code reports as "mAP".
"""

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from attrpreserve.metrics.functional._checks import _check_validate_args
from attrpreserve.metrics.functional.per_image_ap import (
    _per_image_ap_arg_validation,
    _per_image_ap_compute,
    _per_image_ap_tensor_validation,
    _per_image_ap_update,
)

_F1_AVERAGES = ("micro", "macro", "weighted")


class PerImageAveragePrecision(Metric):
    """Mean over images of the average precision of ranking each image's labels by score.

    Equal to averaging sklearn's ``average_precision_score(target[i], preds[i])`` over the images
    with at least one positive label; the others are skipped and counted in ``num_skipped``. Only
    the order of scores within an image matters, so logits and probabilities give the same value.

    As input to ``forward`` and ``update``:

    - ``preds``: ``(N, num_labels)`` float scores (logits or probabilities).
    - ``target``: ``(N, num_labels)`` multi-hot labels, bool or {0, 1}.

    As output of ``forward`` (the batch) and ``compute`` (all batches): a scalar float32.

    Args:
        num_labels: number of labels ``C``.
        zero_division: value returned, with a warning, when no image had a positive label
            (default nan).
        validate_args: check shapes and values on every update.
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction if ``num_labels`` is not a positive int or
            ``zero_division``/``validate_args`` have the wrong type; on update, with
            ``validate_args``, if the shapes are not ``(N, num_labels)``, targets are not binary
            or scores hold NaN/inf.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics import PerImageAveragePrecision
        >>> preds = torch.tensor([[0.9, 0.8, 0.1], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
        >>> target = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 0, 1]])
        >>> metric = PerImageAveragePrecision(num_labels=3)
        >>> metric(preds[:2], target[:2])  # (1/1 + 2/3) / 2; the second image is skipped
        tensor(0.8333)
        >>> metric.update(preds[2:], target[2:])  # top-ranked label is the positive: AP 1
        >>> metric.compute(), metric.num_skipped
        (tensor(0.9167), tensor(1))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    ap_sum: Tensor
    count: Tensor
    num_skipped: Tensor

    def __init__(
        self,
        num_labels: int,
        zero_division: float = float("nan"),
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_validate_args(validate_args)
        _per_image_ap_arg_validation(num_labels, zero_division)
        self.num_labels = num_labels
        self.zero_division = zero_division
        self.validate_args = validate_args
        self.add_state("ap_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_skipped", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of images (see the class docstring for shapes)."""
        if self.validate_args:
            _per_image_ap_tensor_validation(preds, target, self.num_labels)
        ap_sum, count, num_skipped = _per_image_ap_update(preds, target)
        self.ap_sum += ap_sum
        self.count += count
        self.num_skipped += num_skipped

    def compute(self) -> Tensor:
        """Mean AP over all images counted since the last reset."""
        return _per_image_ap_compute(self.ap_sum, self.count, self.zero_division)


def classification_metrics(
    num_labels: int,
    prefix: str = "",
    f1_average: Literal["micro", "macro", "weighted"] = "micro",
    threshold: float = 0.5,
) -> MetricCollection:
    """mAP (per class and per image) and F1 for a multi-label classifier, as one collection.

    Keys (after ``prefix``): ``map`` = per-class VOC mAP (torchmetrics
    ``MultilabelAveragePrecision``, ``average="macro"``), ``map_image`` = per-image AP averaged
    over images (``PerImageAveragePrecision``, the reference code's "mAP"), ``f1`` = torchmetrics
    ``MultilabelF1Score`` at ``threshold`` on probabilities. The reference code thresholds logits
    at 0.5; we threshold the probability at 0.5, i.e. the logit at 0. Which F1 average the paper
    reports is not documented; ``"micro"`` (pooled over all image-label pairs) is the default.

    Pass probabilities (``logits.sigmoid()``): torchmetrics applies a sigmoid only to batches
    whose values leave [0, 1], so a batch of logits that happens to lie in [0, 1] would be read as
    probabilities. Targets are ``(N, num_labels)`` integer {0, 1}. Log the collection with
    ``self.log_dict(collection)``; make one collection per stage.

    Args:
        num_labels: number of labels ``C``.
        prefix: prepended to every key, e.g. ``"val/"``.
        f1_average: ``"micro"``, ``"macro"`` or ``"weighted"``.
        threshold: probability above which a label counts as predicted.

    Returns:
        ``torchmetrics.MetricCollection`` with keys ``map``, ``map_image`` and ``f1``.

    Raises:
        ValueError: if ``num_labels`` is not a positive int, ``prefix`` not a str,
            ``f1_average`` not allowed, or ``threshold`` not in (0, 1).

    Example:
        >>> import torch
        >>> from attrpreserve.metrics import classification_metrics
        >>> metrics = classification_metrics(num_labels=2, prefix="val/")
        >>> probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4]])
        >>> target = torch.tensor([[1, 0], [0, 1], [1, 0]])
        >>> {k: round(v.item(), 4) for k, v in sorted(metrics(probs, target).items())}
        {'val/f1': 0.6667, 'val/map': 0.9167, 'val/map_image': 0.8333}
    """
    _per_image_ap_arg_validation(num_labels)
    if not isinstance(prefix, str):
        raise ValueError(f"Expected argument `prefix` to be a str, but got {prefix!r}")
    if f1_average not in _F1_AVERAGES:
        raise ValueError(f"Expected argument `f1_average` to be one of {_F1_AVERAGES}, but got {f1_average!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"Expected argument `threshold` to be a float in (0, 1), but got {threshold!r}")
    return MetricCollection(
        {
            "map": MultilabelAveragePrecision(num_labels, average="macro"),
            "map_image": PerImageAveragePrecision(num_labels),
            "f1": MultilabelF1Score(num_labels, threshold=threshold, average=f1_average),
        },
        prefix=prefix or None,
    )

"""Predictive metrics: per-class mAP, per-image AP (the reference code's "mAP"), F1, one collection.

Which mAP is which:

- ``map``: the standard per-class VOC mAP, exact (not binned) AP per class, averaged over the
  classes with at least one positive target in everything seen (``PresentClassAveragePrecision``).
  A class absent from a split has no AP; counting it as 0 (torchmetrics' ``average="macro"``)
  halves the mAP of a split holding half the classes.
- ``map_image``: ``PerImageAveragePrecision``, AP of ranking each image's labels, averaged over
  images; this is what the paper's reference code reports as "mAP".
- ``num_classes_averaged``: how many classes ``map`` (and a macro F1) averaged over.
"""

from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score
from torchmetrics.functional.classification import multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn

from attrpreserve.metrics._base import UnitScoreMetric
from attrpreserve.metrics.functional._checks import _check_validate_args
from attrpreserve.metrics.functional.per_image_ap import (
    _per_image_ap_arg_validation,
    _per_image_ap_compute,
    _per_image_ap_tensor_validation,
    _per_image_ap_update,
)

_F1_AVERAGES = ("micro", "macro", "weighted")


def _check_class_names(class_names: Optional[Sequence[str]], num_labels: int) -> Optional[tuple[str, ...]]:
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names) \
            or len(class_names) != num_labels:
        raise ValueError(
            f"Expected argument `class_names` to be None or {num_labels} strings (one per label), but got"
            f" {class_names!r}"
        )
    return tuple(class_names)


def _check_present_class_args(num_labels: int, class_names: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    """Check ``num_labels`` and ``class_names`` before torchmetrics does; the names as a tuple."""
    _per_image_ap_arg_validation(num_labels)
    return _check_class_names(class_names, num_labels)


def _positives_update(target: Tensor) -> Tensor:
    """Positive targets per class of one batch, ``(num_labels,)`` int64."""
    return (target == 1).sum(dim=0).long()


class _AbsentClassWarning:
    """Warns (rank zero) naming the classes an average left out, once per distinct set per metric."""

    def __init__(self, what: str, class_names: Optional[tuple[str, ...]]) -> None:
        self.what, self.class_names = what, class_names
        self.warned: set[tuple[int, ...]] = set()

    @classmethod
    def attach(cls, metric: Metric, class_names: Optional[tuple[str, ...]], warn_absent: bool) -> None:
        """Give ``metric`` its ``class_names``, ``warn_absent`` and a warning named after its class."""
        metric.class_names, metric.warn_absent = class_names, warn_absent
        metric._warn = cls(type(metric).__name__, class_names)

    def __call__(self, present: Tensor) -> None:
        absent = tuple(torch.nonzero(~present).flatten().tolist())
        if not absent or absent in self.warned:
            return
        self.warned.add(absent)
        names = [self.class_names[i] if self.class_names else f"class {i}" for i in absent]
        kept = int(present.sum())
        rank_zero_warn(
            f"{self.what}: {len(absent)} of {present.numel()} classes have no positive target in the data seen and"
            f" are left out of the average: {', '.join(names)}. Averaged over the {kept} classes present.",
            UserWarning,
        )


class PresentClassAveragePrecision(MultilabelAveragePrecision):
    """Per-class average precision (exact), averaged over the classes that have a positive target.

    torchmetrics' ``MultilabelAveragePrecision(average="macro")`` counts a class with no positive
    in the data as AP 0, so a split holding 10 of 20 classes reads half its mAP. Here such a class
    is left out of the mean, as sklearn's per-class ``average_precision_score`` would leave its
    undefined value out, and a warning names it (once per set of absent classes). Which classes
    are present is a summed per-class count of positives, so it is the same on every rank.

    As input to ``forward`` and ``update`` (as ``MultilabelAveragePrecision``):

    - ``preds``: ``(N, num_labels)`` probabilities, or logits (a sigmoid is applied to a batch whose
      values leave [0, 1]).
    - ``target``: ``(N, num_labels)`` multi-hot labels {0, 1}.

    As output of ``forward`` (the batch) and ``compute`` (all batches): a scalar float32; nan, with
    the warning, when no class has a positive target.

    Args:
        num_labels: number of labels ``C``.
        class_names: ``C`` names, used in the warning (default: class indices).
        warn_absent: warn when a class has no positive target (off when another metric warns).
        validate_args: check arguments and tensors (torchmetrics' checks).
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction if ``num_labels`` is not a positive int or ``class_names`` is
            not ``num_labels`` strings; on update (torchmetrics' checks) if shapes or target values
            are wrong.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics.predictive import PresentClassAveragePrecision
        >>> preds = torch.tensor([[0.9, 0.2, 0.1], [0.6, 0.7, 0.3], [0.3, 0.4, 0.2]])
        >>> target = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # class 2 never positive
        >>> metric = PresentClassAveragePrecision(num_labels=3, class_names=["cat", "dog", "cow"])
        >>> metric.update(preds, target)
        >>> metric.compute()  # (0.8333 + 1.0) / 2, not / 3; warns naming "cow"
        tensor(0.9167)
    """

    positives: Tensor

    def __init__(
        self,
        num_labels: int,
        class_names: Optional[Sequence[str]] = None,
        warn_absent: bool = True,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        names = _check_present_class_args(num_labels, class_names)
        super().__init__(num_labels, average=None, thresholds=None, validate_args=validate_args, **kwargs)
        _AbsentClassWarning.attach(self, names, warn_absent)
        self.add_state("positives", torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch (see the class docstring for shapes)."""
        super().update(preds, target)
        self.positives += _positives_update(target).to(self.positives.device)

    def compute(self) -> Tensor:
        """Mean exact AP over the classes with at least one positive target since the last reset."""
        present = self.positives > 0
        if self.warn_absent:
            self._warn(present)
        if not bool(present.any()):
            return torch.tensor(float("nan"))
        preds, target = dim_zero_cat(self.preds)[:, present], dim_zero_cat(self.target)[:, present]
        per_class = multilabel_average_precision(
            preds, target, num_labels=int(present.sum()), average=None, thresholds=None, validate_args=False
        )
        return per_class.float().mean()


class PresentClassF1Score(MultilabelF1Score):
    """Macro F1 (per-class F1 at ``threshold``, averaged) over the classes that have a positive target.

    torchmetrics' multi-label macro F1 counts a class with no positive target as F1 0; here it is
    left out of the mean (and named in a warning), like ``PresentClassAveragePrecision``. A class
    with positives always has ``2 tp + fp + fn > 0``, so no zero division arises. Its states are
    torchmetrics' per-class ``tp``/``fp``/``fn`` sums, which sync across ranks; the present classes
    are those with ``tp + fn > 0``.

    Inputs and output as ``MultilabelF1Score``: ``preds`` ``(N, num_labels)`` probabilities,
    ``target`` ``(N, num_labels)`` {0, 1}; a scalar float32 (nan, with the warning, when no class
    has a positive target).

    Args:
        num_labels: number of labels ``C``.
        threshold: probability above which a label counts as predicted.
        class_names: ``C`` names, used in the warning (default: class indices).
        warn_absent: warn when a class has no positive target.
        validate_args: check arguments and tensors (torchmetrics' checks).
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction if ``num_labels`` is not a positive int or ``class_names`` is
            not ``num_labels`` strings; torchmetrics' checks of ``threshold`` and of the tensors.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics.predictive import PresentClassF1Score
        >>> preds = torch.tensor([[0.9, 0.2, 0.6], [0.6, 0.7, 0.3], [0.3, 0.4, 0.2]])
        >>> target = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # class 2 never positive
        >>> metric = PresentClassF1Score(num_labels=3, warn_absent=False)
        >>> metric(preds, target)  # (F1 0.5 of class 0 + F1 1.0 of class 1) / 2
        tensor(0.7500)
    """

    def __init__(
        self,
        num_labels: int,
        threshold: float = 0.5,
        class_names: Optional[Sequence[str]] = None,
        warn_absent: bool = True,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        names = _check_present_class_args(num_labels, class_names)
        super().__init__(num_labels, threshold=threshold, average=None, validate_args=validate_args, **kwargs)
        _AbsentClassWarning.attach(self, names, warn_absent)

    def compute(self) -> Tensor:
        """Mean F1 over the classes with at least one positive target since the last reset."""
        tp, fp, _, fn = self._final_state()
        present = (tp + fn) > 0
        if self.warn_absent:
            self._warn(present)
        if not bool(present.any()):
            return torch.tensor(float("nan"))
        tp, fp, fn = tp[present].double(), fp[present].double(), fn[present].double()
        return (2 * tp / (2 * tp + fp + fn)).mean().float()


class PresentClassCount(Metric):
    """How many classes have at least one positive target: the number ``map`` averages over.

    As input to ``forward`` and ``update``: ``preds`` and ``target`` as the other classification
    metrics (``preds`` is only checked, so the metric fits in one collection with them). As output:
    a scalar int64. The state is a summed per-class count of positives, so it syncs across ranks.

    Args:
        num_labels: number of labels ``C``.
        validate_args: check shapes and values on every update.
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction if ``num_labels`` is not a positive int; on update, with
            ``validate_args``, if the shapes are not ``(N, num_labels)`` or targets are not binary.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics.predictive import PresentClassCount
        >>> metric = PresentClassCount(num_labels=4)
        >>> metric.update(torch.rand(2, 4), torch.tensor([[1, 0, 0, 0], [1, 0, 1, 0]]))
        >>> metric.compute(), metric.positives
        (tensor(2), tensor([2, 0, 1, 0]))
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    positives: Tensor

    def __init__(self, num_labels: int, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_validate_args(validate_args)
        _per_image_ap_arg_validation(num_labels)
        self.num_labels, self.validate_args = num_labels, validate_args
        self.add_state("positives", torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count the batch's positive targets per class."""
        if self.validate_args:
            _per_image_ap_tensor_validation(preds, target, self.num_labels)
        self.positives += _positives_update(target).to(self.positives.device)

    def compute(self) -> Tensor:
        """Number of classes with at least one positive target since the last reset."""
        return (self.positives > 0).sum()


class PerImageAveragePrecision(UnitScoreMetric):
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
        self._add_to_states(ap_sum=ap_sum, count=count, num_skipped=num_skipped)

    def compute(self) -> Tensor:
        """Mean AP over all images counted since the last reset."""
        return _per_image_ap_compute(self.ap_sum, self.count, self.zero_division)


def classification_metrics(
    num_labels: int,
    prefix: str = "",
    f1_average: Literal["micro", "macro", "weighted"] = "micro",
    threshold: float = 0.5,
    class_names: Optional[Sequence[str]] = None,
) -> MetricCollection:
    """mAP (per class and per image) and F1 for a multi-label classifier, as one collection.

    Keys (after ``prefix``):

    - ``map``: per-class VOC mAP, exact AP per class averaged over the classes with at least one
      positive target in everything seen (``PresentClassAveragePrecision``); a warning names the
      classes left out.
    - ``map_image``: per-image AP averaged over images (``PerImageAveragePrecision``, the
      reference code's "mAP").
    - ``f1``: F1 at ``threshold`` on probabilities. ``"micro"`` (default) pools all image-label
      pairs, so it has no per-class average: a class absent from the split adds only its false
      positives, which are real errors. ``"macro"`` averages per-class F1 over the same classes as
      ``map`` (``PresentClassF1Score``). ``"weighted"`` weights classes by their positives, so an
      absent class has weight 0 already (torchmetrics ``MultilabelF1Score``). The reference code
      thresholds logits at 0.5; we threshold the probability at 0.5, i.e. the logit at 0. Which F1
      average the paper reports is not documented.
    - ``num_classes_averaged``: the number of classes ``map`` (and a macro ``f1``) averaged over,
      int64 (``PresentClassCount``).

    Pass probabilities (``logits.sigmoid()``): torchmetrics applies a sigmoid only to batches
    whose values leave [0, 1], so a batch of logits that happens to lie in [0, 1] would be read as
    probabilities. Targets are ``(N, num_labels)`` integer {0, 1}. Log the collection with
    ``self.log_dict(collection)``; make one collection per stage.

    Args:
        num_labels: number of labels ``C``.
        prefix: prepended to every key, e.g. ``"val/"``.
        f1_average: ``"micro"``, ``"macro"`` or ``"weighted"``.
        threshold: probability above which a label counts as predicted.
        class_names: ``C`` names for the absent-class warning (default: class indices).

    Returns:
        ``torchmetrics.MetricCollection`` with keys ``map``, ``map_image``, ``f1`` and
        ``num_classes_averaged``.

    Raises:
        ValueError: if ``num_labels`` is not a positive int, ``prefix`` not a str,
            ``f1_average`` not allowed, ``threshold`` not in (0, 1), or ``class_names`` not
            ``num_labels`` strings.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics import classification_metrics
        >>> metrics = classification_metrics(num_labels=2, prefix="val/")
        >>> probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4]])
        >>> target = torch.tensor([[1, 0], [0, 1], [1, 0]])
        >>> {k: round(v.item(), 4) for k, v in sorted(metrics(probs, target).items())}
        {'val/f1': 0.6667, 'val/map': 0.9167, 'val/map_image': 0.8333, 'val/num_classes_averaged': 2}
    """
    _per_image_ap_arg_validation(num_labels)
    if not isinstance(prefix, str):
        raise ValueError(f"Expected argument `prefix` to be a str, but got {prefix!r}")
    if f1_average not in _F1_AVERAGES:
        raise ValueError(f"Expected argument `f1_average` to be one of {_F1_AVERAGES}, but got {f1_average!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"Expected argument `threshold` to be a float in (0, 1), but got {threshold!r}")
    names = _check_class_names(class_names, num_labels)
    if f1_average == "macro":  # `map` already warns about the same absent classes
        f1: Metric = PresentClassF1Score(num_labels, threshold=threshold, class_names=names, warn_absent=False)
    else:
        f1 = MultilabelF1Score(num_labels, threshold=threshold, average=f1_average)
    return MetricCollection(
        {
            "map": PresentClassAveragePrecision(num_labels, class_names=names),
            "map_image": PerImageAveragePrecision(num_labels),
            "f1": f1,
            "num_classes_averaged": PresentClassCount(num_labels),
        },
        prefix=prefix or None,
    )

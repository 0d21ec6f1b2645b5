"""Per-image average precision: rank one image's classes by score, averaged over images.

This is what the paper's reference code reports as "mAP"; the standard VOC mAP (per class, over
images, averaged over the classes present) is
:class:`~attrpreserve.metrics.predictive.PresentClassAveragePrecision`.
"""

import torch
from torch import Tensor

from attrpreserve.metrics.functional._checks import (
    _as_float,
    _check_binary,
    _check_positive_int,
    _check_real,
    _check_zero_division,
    _divide,
)


def _per_image_ap_arg_validation(num_labels: int, zero_division: float = float("nan")) -> None:
    _check_positive_int(num_labels, "num_labels")
    _check_zero_division(zero_division)


def _per_image_ap_tensor_validation(preds: Tensor, target: Tensor, num_labels: int) -> None:
    for name, x in (("preds", preds), ("target", target)):
        if not isinstance(x, Tensor):
            raise ValueError(f"Expected `{name}` to be a tensor, but got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != num_labels:
            raise ValueError(f"Expected `{name}` to have shape (N, {num_labels}), but got {tuple(x.shape)}")
    if preds.shape != target.shape:
        raise ValueError(
            f"Expected `preds` and `target` to have the same shape, but got {tuple(preds.shape)}"
            f" and {tuple(target.shape)}"
        )
    _check_real(preds, "preds")
    _check_binary(target, "target")


def _per_image_ap_update(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(ap_sum float64, count int64, num_skipped int64)`` of one batch.

    Per row, as sklearn's ``average_precision_score``: sort scores descending; tied scores form
    one threshold; every positive earns the precision at the end of its tie group; AP is the
    mean of those precisions over the row's positives.
    """
    n, c = preds.shape
    scores, order = torch.sort(_as_float(preds), dim=1, descending=True)
    positive = target.bool().gather(1, order)
    ends = torch.ones_like(positive)
    ends[:, :-1] = scores[:, 1:] != scores[:, :-1]
    rank = torch.arange(1, c + 1, device=preds.device)
    precision = positive.long().cumsum(dim=1).double() / rank.double()
    # index of the end of each position's tie group, from the right
    end_index = torch.where(ends, rank - 1, c).flip(1).cummin(dim=1).values.flip(1)
    precision_at_end = precision.gather(1, end_index)
    num_pos = positive.sum(dim=1)
    counted = num_pos > 0
    ap = (precision_at_end * positive).sum(dim=1) / num_pos.clamp(min=1).double()
    return ap.sum(), counted.sum(), (~counted).sum()


def _per_image_ap_compute(ap_sum: Tensor, count: Tensor, zero_division: float = float("nan")) -> Tensor:
    return _divide(ap_sum, count, zero_division, "PerImageAveragePrecision")


def per_image_average_precision(
    preds: Tensor,
    target: Tensor,
    num_labels: int,
    zero_division: float = float("nan"),
    validate_args: bool = True,
) -> Tensor:
    """Mean over images of the average precision of ranking each image's labels by score.

    Equal to averaging sklearn's ``average_precision_score(target[i], preds[i])`` over the images
    ``i`` that have at least one positive label; images without one are skipped. Only the order of
    scores within an image matters, so logits and probabilities give the same value.

    Args:
        preds: ``(N, num_labels)`` scores (logits or probabilities).
        target: ``(N, num_labels)`` multi-hot labels, bool or {0, 1}.
        num_labels: number of labels ``C``.
        zero_division: returned (with a warning) when no image had a positive label.
        validate_args: check the tensors' shapes and values.

    Returns:
        Scalar float32 in [0, 1].

    Raises:
        ValueError: if ``num_labels`` is not a positive int or ``zero_division`` not a float, or,
            with ``validate_args``, if the shapes are not ``(N, num_labels)``, targets are not
            binary, or scores hold NaN/inf.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics.functional import per_image_average_precision
        >>> preds = torch.tensor([[0.9, 0.8, 0.1], [0.3, 0.2, 0.1]])
        >>> target = torch.tensor([[1, 0, 1], [0, 0, 0]])  # second image skipped
        >>> per_image_average_precision(preds, target, num_labels=3)  # (1/1 + 2/3) / 2
        tensor(0.8333)
    """
    if validate_args:
        _per_image_ap_arg_validation(num_labels, zero_division)
        _per_image_ap_tensor_validation(preds, target, num_labels)
    ap_sum, count, _ = _per_image_ap_update(preds, target)
    return _per_image_ap_compute(ap_sum, count, zero_division)

"""``MapSimilarity``: a torchmetrics Metric around ``functional.map_similarity``."""

from typing import Any, Literal

import torch
from torch import Tensor

from attrpreserve.metrics._base import PlottableMetric
from attrpreserve.metrics.functional._checks import _check_validate_args
from attrpreserve.metrics.functional.map_similarity import (
    _map_similarity_arg_validation,
    _map_similarity_compute,
    _map_similarity_format,
    _map_similarity_tensor_validation,
    _map_similarity_update,
)


class MapSimilarity(PlottableMetric):
    """Mean cosine similarity and mean L2 distance of student maps to teacher maps.

    The paper's "Cos" and "l2" columns. Each map is flattened and normalised on its own; ``cos``
    is the cosine of the two vectors (0 when either is all zeros) and ``l2`` the Euclidean norm of
    their difference. With the default ``"minmax"`` (each map scaled to [0, 1], a constant map to
    zeros) ``l2`` grows with the number of pixels: the paper's values (8 to 45) fit maps upsampled
    to the 224 px image; compare ``l2`` only at one resolution. ``cos``: higher is better; ``l2``:
    lower is better, hence ``higher_is_better = None``.

    As input to ``forward`` and ``update``:

    - ``student_maps``: ``(N, H, W)`` or ``(N, 1, H, W)`` real-valued maps.
    - ``teacher_maps``: same shape as ``student_maps``.

    As output of ``forward`` (the batch) and ``compute`` (all batches): ``{"cos": t, "l2": t}``
    with scalar float32 tensors. Lightning's ``self.log`` takes one scalar, so log
    ``self.log_dict({f"val/{k}": v for k, v in metric.compute().items()})`` and call
    ``metric.reset()`` at the end of the epoch.

    Args:
        normalize: ``"minmax"`` (default), ``"l2"`` (unit norm per map) or ``None`` (as given).
        zero_division: value returned, with a warning, when there are no maps (default nan).
        validate_args: check shapes and values on every update.
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction if ``normalize`` is not ``"minmax"``/``"l2"``/``None``, or
            ``zero_division``/``validate_args`` have the wrong type; on update, with
            ``validate_args``, if the shapes differ or the maps hold NaN/inf.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics import MapSimilarity
        >>> student = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]])
        >>> teacher = torch.tensor([[[4.0, 4.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]])
        >>> metric = MapSimilarity()
        >>> metric(student[:1], teacher[:1])  # [1, 0, 0, 0] against [1, 1, 0, 0]
        {'cos': tensor(0.7071), 'l2': tensor(1.)}
        >>> metric.update(student[1:], teacher[1:])  # identical maps: cos 1, l2 0
        >>> metric.compute()
        {'cos': tensor(0.8536), 'l2': tensor(0.5000)}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    cos_sum: Tensor
    l2_sum: Tensor
    count: Tensor

    def __init__(
        self,
        normalize: Literal["minmax", "l2"] | None = "minmax",
        zero_division: float = float("nan"),
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_validate_args(validate_args)
        _map_similarity_arg_validation(normalize, zero_division)
        self.normalize = normalize
        self.zero_division = zero_division
        self.validate_args = validate_args
        self.add_state("cos_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("l2_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, student_maps: Tensor, teacher_maps: Tensor) -> None:
        """Add a batch of (student, teacher) map pairs (see the class docstring for shapes)."""
        if self.validate_args:
            _map_similarity_tensor_validation(student_maps, teacher_maps)
        student, teacher = _map_similarity_format(student_maps, teacher_maps)
        cos_sum, l2_sum, count = _map_similarity_update(student, teacher, self.normalize)
        self._add_to_states(cos_sum=cos_sum, l2_sum=l2_sum, count=count)

    def compute(self) -> dict[str, Tensor]:
        """Mean cosine similarity and mean L2 distance over all maps since the last reset."""
        return _map_similarity_compute(self.cos_sum, self.l2_sum, self.count, self.zero_division)

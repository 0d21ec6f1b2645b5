"""Cosine similarity and L2 distance between student and teacher maps (the paper's "Cos" and "l2")."""

from typing import Literal, Optional

import torch
from torch import Tensor

from attrpreserve.metrics.functional._checks import (
    _check_map_shape,
    _check_real,
    _check_same_shape,
    _check_zero_division,
    _divide,
    _format_maps,
)

_NORMALIZE = (None, "minmax", "l2")


def _map_similarity_arg_validation(
    normalize: Optional[str] = "minmax", zero_division: float = float("nan")
) -> None:
    if normalize not in _NORMALIZE:
        raise ValueError(f"Expected argument `normalize` to be one of {_NORMALIZE}, but got {normalize!r}")
    _check_zero_division(zero_division)


def _map_similarity_tensor_validation(student_maps: Tensor, teacher_maps: Tensor) -> None:
    _check_map_shape(student_maps, "student_maps")
    _check_map_shape(teacher_maps, "teacher_maps")
    _check_same_shape(student_maps, teacher_maps, "student_maps", "teacher_maps")
    _check_real(student_maps, "student_maps")
    _check_real(teacher_maps, "teacher_maps")


def _map_similarity_format(student_maps: Tensor, teacher_maps: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten to ``(N, H*W)`` float64."""
    n = student_maps.shape[0]
    return (_format_maps(student_maps).reshape(n, -1).double(), _format_maps(teacher_maps).reshape(n, -1).double())


def _normalize_rows(x: Tensor, normalize: Optional[str]) -> Tensor:
    """Per-row ``"minmax"`` to [0, 1] or ``"l2"`` to unit norm; constant / zero rows become 0."""
    if normalize == "minmax":
        low = x.amin(dim=1, keepdim=True)
        span = x.amax(dim=1, keepdim=True) - low
        return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1.0), 0.0)
    if normalize == "l2":
        norm = x.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, x / torch.where(norm > 0, norm, 1.0), 0.0)
    return x


def _map_similarity_update(
    student: Tensor, teacher: Tensor, normalize: Optional[str] = "minmax"
) -> tuple[Tensor, Tensor, Tensor]:
    """``(cos_sum float64, l2_sum float64, count int64)`` of one batch (formatted inputs)."""
    s, t = _normalize_rows(student, normalize), _normalize_rows(teacher, normalize)
    norms = s.norm(dim=1) * t.norm(dim=1)
    cos = torch.where(norms > 0, (s * t).sum(dim=1) / torch.where(norms > 0, norms, 1.0), 0.0)
    l2 = (s - t).norm(dim=1)
    return cos.sum(), l2.sum(), torch.tensor(s.shape[0], device=s.device)


def _map_similarity_compute(
    cos_sum: Tensor, l2_sum: Tensor, count: Tensor, zero_division: float = float("nan")
) -> dict[str, Tensor]:
    return {
        "cos": _divide(cos_sum, count, zero_division, "MapSimilarity"),
        "l2": _divide(l2_sum, count, zero_division, "MapSimilarity"),
    }


def map_similarity(
    student_maps: Tensor,
    teacher_maps: Tensor,
    normalize: Literal["minmax", "l2"] | None = "minmax",
    zero_division: float = float("nan"),
    validate_args: bool = True,
) -> dict[str, Tensor]:
    """Mean cosine similarity and mean L2 distance between student and teacher maps.

    Each map is flattened and normalised on its own, then ``cos`` is the cosine of the two
    vectors (0 when either is all zeros) and ``l2`` the Euclidean norm of their difference.
    With the default ``"minmax"`` (each map scaled to [0, 1]), ``l2`` grows with the number of
    pixels: the paper's l2 column (8 to 45) matches maps upsampled to the 224 px image, not
    14x14 maps; compare numbers only at the same resolution. Cos: higher is better; l2: lower.

    Args:
        student_maps: ``(N, H, W)`` or ``(N, 1, H, W)`` real-valued maps.
        teacher_maps: same shape as ``student_maps``.
        normalize: ``"minmax"`` (per map to [0, 1], a constant map becomes zeros), ``"l2"``
            (per map to unit norm, a zero map stays zero) or ``None`` (maps as given).
        zero_division: returned (with a warning) when there are no maps.
        validate_args: check the tensors' shapes and values.

    Returns:
        ``{"cos": tensor, "l2": tensor}``, scalar float32 means over maps.

    Raises:
        ValueError: if ``normalize`` or ``zero_division`` is not allowed, or, with
            ``validate_args``, if the shapes differ or the maps hold NaN/inf.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics.functional import map_similarity
        >>> student = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
        >>> teacher = torch.tensor([[[4.0, 4.0], [0.0, 0.0]]])
        >>> map_similarity(student, teacher)  # [1, 0, 0, 0] against [1, 1, 0, 0]
        {'cos': tensor(0.7071), 'l2': tensor(1.)}
    """
    if validate_args:
        _map_similarity_arg_validation(normalize, zero_division)
        _map_similarity_tensor_validation(student_maps, teacher_maps)
    student, teacher = _map_similarity_format(student_maps, teacher_maps)
    cos_sum, l2_sum, count = _map_similarity_update(student, teacher, normalize)
    return _map_similarity_compute(cos_sum, l2_sum, count, zero_division)

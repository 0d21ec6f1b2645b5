"""Distillation losses (multi-label sigmoid KD, softmax KD) and the normalised map-matching loss.

Every loss is computed in float32, whatever the dtype of its inputs: under mixed precision
(``torch.autocast`` with bf16 or fp16) logits and maps arrive in half precision, and a sigmoid
KL, an L2 normalisation or a mean of squared differences in bf16 would lose most of the signal.
The casts are explicit and differentiable (float64 inputs stay float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a half type (bf16, fp16), else unchanged; differentiable."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"Expected argument `temperature` to be > 0, but got {temperature!r}.")


def multilabel_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """The paper's multi-label KD: per (image, class) a two-way distribution
    ``[sigmoid(z/T), 1 - sigmoid(z/T)]``; ``KL(teacher || student) * T^2`` averaged over pairs.

    Example:
        >>> z = torch.tensor([[2.0, -1.0]])
        >>> multilabel_kd_loss(z, z).item()
        0.0
    """
    _check_temperature(temperature)
    s, t = full_precision(student_logits) / temperature, full_precision(teacher_logits.detach()) / temperature
    p_t = torch.sigmoid(t)
    # log p and log(1-p) via logsigmoid: finite for any logit.
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * temperature**2


def softmax_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD for single-label data: ``KL(softmax(t/T) || softmax(s/T)) * T^2``, batch mean.

    Example:
        >>> z = torch.tensor([[2.0, -1.0, 0.5]])
        >>> softmax_kd_loss(z, z).item()
        0.0
    """
    _check_temperature(temperature)
    log_s = F.log_softmax(full_precision(student_logits) / temperature, dim=1)
    log_t = F.log_softmax(full_precision(teacher_logits.detach()) / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def matching_loss(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    """Normalised map matching: flatten each map, L2-normalise, mean of squared differences.

    The student map is resized (bilinear) to the teacher's when their sizes differ. All-zero maps
    normalise to zero (no NaN, finite gradients). Computed in float32 (half-precision maps are
    cast first, outside any autocast region).

    Args:
        student_map: ``[B, 1, h, w]``.
        teacher_map: ``[B, 1, H, W]`` (a constant: no gradient flows into it).

    Example:
        >>> t = torch.tensor([[[[3.0, 4.0]]]])
        >>> matching_loss(2 * t, t).item()  # scale-invariant
        0.0
        >>> matching_loss(torch.zeros(1, 1, 1, 2), t).item()  # (0.6^2 + 0.8^2) / 2
        0.5
    """
    if student_map.ndim != 4 or teacher_map.ndim != 4:
        raise ValueError(
            "Expected `student_map` and `teacher_map` to be [B, 1, H, W], but got "
            f"{tuple(student_map.shape)} and {tuple(teacher_map.shape)}."
        )
    if student_map.shape[0] != teacher_map.shape[0]:
        raise ValueError(
            f"Expected maps with the same batch size, but got {student_map.shape[0]} and {teacher_map.shape[0]}."
        )
    student_map = full_precision(student_map)
    with torch.autocast(student_map.device.type, enabled=False):
        if student_map.shape[-2:] != teacher_map.shape[-2:]:
            student_map = F.interpolate(student_map, size=teacher_map.shape[-2:], mode="bilinear",
                                        align_corners=False)
        s = F.normalize(student_map.flatten(1), p=2, dim=1)
        t = F.normalize(teacher_map.detach().flatten(1).to(s.dtype), p=2, dim=1)
        return (t - s).pow(2).mean()

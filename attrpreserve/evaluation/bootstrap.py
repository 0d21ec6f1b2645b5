"""Percentile bootstrap confidence intervals over scored pairs, seeded and batched."""

from __future__ import annotations

import math

import torch
from torch import Tensor


_CHUNK = 4_000_000


def _statistic(values: Tensor, classes: Tensor | None, num_classes: int | None, index: Tensor) -> Tensor:
    """The statistic of each resample (a row of ``index``)."""
    sample = values[index]
    if classes is None:
        return sample.mean(dim=1)
    cls = classes[index]
    shape = (index.shape[0], int(num_classes))  # type: ignore[arg-type]
    sums = torch.zeros(shape, dtype=torch.float64).scatter_add_(1, cls, sample)
    counts = torch.zeros(shape, dtype=torch.float64).scatter_add_(1, cls, torch.ones_like(sample))
    return (sums / counts.clamp(min=1)).mean(dim=1)


def _check(resamples: int, level: float, seed: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"Expected argument `resamples` to be a positive int, but got {resamples!r}.")
    if isinstance(level, bool) or not isinstance(level, float) or not 0 < level < 1:
        raise ValueError(f"Expected argument `level` to be a float in (0, 1), but got {level!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Expected argument `seed` to be an int, but got {seed!r}.")


def bootstrap_ci(
    values: Tensor,
    classes: Tensor | None = None,
    num_classes: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over pairs (resampled with replacement).

    The statistic is the mean of ``values`` over the finite entries (nan entries, e.g. maps
    without an AUC, are left out of every resample), or, with ``classes`` and ``num_classes``,
    the mean over all ``num_classes`` classes of the per-class means (a class absent from a
    resample counts 0: TorchRay's point accuracy). All resamples run as one ``[R, N]`` index.

    Args:
        values: ``(N,)`` per-pair values (hits as 0/1, AUCs).
        classes: optional ``(N,)`` class of each pair (per-class averaging).
        num_classes: K, with ``classes``.
        resamples: number of bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling generator (the interval is reproducible).

    Returns:
        ``(low, high)``; ``(nan, nan)`` without a finite value.

    Raises:
        ValueError: a bad ``resamples``/``level``/``seed``, or ``classes`` without ``num_classes``.

    Example:
        >>> hits = torch.tensor([1.0] * 8 + [0.0] * 2)
        >>> low, high = bootstrap_ci(hits, seed=0)
        >>> low <= 0.8 <= high, 0.5 <= low, high <= 1.0
        (True, True, True)
        >>> bootstrap_ci(torch.ones(5))
        (1.0, 1.0)
    """
    _check(resamples, level, seed)
    if classes is not None and not isinstance(num_classes, int):
        raise ValueError(f"Expected argument `num_classes` to be an int with `classes`, but got {num_classes!r}.")
    values = values.detach().cpu()
    keep = torch.isfinite(values)
    values = values[keep].double()
    if values.numel() == 0:
        return math.nan, math.nan
    generator = torch.Generator().manual_seed(seed)
    cls = None if classes is None else classes[keep].long().cpu()
    chunk = max(1, _CHUNK // values.numel())  # resamples per [chunk, N] index: bounded memory
    stats = torch.cat([_statistic(values, cls, num_classes, torch.randint(
        values.numel(), (min(chunk, resamples - start), values.numel()), generator=generator))
        for start in range(0, resamples, chunk)])
    alpha = (1 - level) / 2
    low, high = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return low, high


__all__ = ["bootstrap_ci"]

"""The evaluation protocols: which (image, class) pairs are scored and how the pointing game
counts (see :mod:`attrpreserve.evaluate` for what each one reproduces)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """Which pairs are scored and how the pointing game counts.

    Attributes:
        predicted_only: score only ground-truth classes with logit > 0.
        tolerance: pointing-game radius in pixels.
        average: ``"micro"`` (over maps) or ``"class"`` (per class, then the mean over all classes,
            as TorchRay; also reports the difficult subset).

    Example:
        >>> PROTOCOLS["torchray"]
        Protocol(predicted_only=False, tolerance=15, average='class')
    """

    predicted_only: bool
    tolerance: float
    average: str


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(predicted_only=True, tolerance=0, average="micro"),
    "torchray": Protocol(predicted_only=False, tolerance=15, average="class"),
    "all": Protocol(predicted_only=False, tolerance=0, average="micro"),
}

__all__ = ["PROTOCOLS", "Protocol"]

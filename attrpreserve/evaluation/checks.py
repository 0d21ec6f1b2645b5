"""Checks of what :func:`~attrpreserve.evaluate.evaluate` and
:class:`~attrpreserve.evaluation.AttributionEvaluator` accept: the scoring settings (once, before
any model work) and every batch (keys, shapes, mask or box values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from attrpreserve.attribution.methods import check_method
from attrpreserve.data.common import IGNORE_INDEX
from attrpreserve.evaluation.protocol import PROTOCOLS, Protocol


def check_protocol(protocol: Any) -> Protocol:
    """The :class:`Protocol` named ``protocol``.

    Raises:
        ValueError: not a name of :data:`PROTOCOLS`.
    """
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"Expected argument `protocol` to be one of {sorted(PROTOCOLS)}, but got {protocol!r}.")
    return PROTOCOLS[protocol]


def check_methods(methods: Any, method_kwargs: Any = None) -> list[str]:
    """The method names (each once) and their knobs (``layer``, ``relu`` and what the method takes).

    Raises:
        ValueError: no names, a repeated or unknown name, a knob the method does not take, or
            ``method_kwargs`` for a method not evaluated.
    """
    names = [methods] if isinstance(methods, str) else methods
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"Expected argument `methods` to be a method name or a non-empty sequence of names, "
                         f"but got {methods!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Expected argument `methods` to name each method once, but got {list(names)}.")
    if method_kwargs is not None and not isinstance(method_kwargs, Mapping):
        raise ValueError(f"Expected argument `method_kwargs` to be a mapping method -> dict, but got "
                         f"{type(method_kwargs).__name__}.")
    extra = sorted(set(method_kwargs or {}) - set(names))
    if extra:
        raise ValueError(f"Expected the keys of `method_kwargs` to be among the evaluated methods {list(names)}, "
                         f"but got {extra}.")
    for name in names:
        knobs = dict((method_kwargs or {}).get(name, {}))
        reserved = sorted(set(knobs) & {"image_index", "normalize", "classes", "images", "model", "method"})
        if reserved:
            raise ValueError(f"Expected `method_kwargs[{name!r}]` to hold `layer`, `relu` or method knobs, but got "
                             f"{reserved} (set by evaluate).")
        knobs.pop("layer", None)
        knobs.pop("relu", None)
        check_method(name, knobs)
    return list(names)


# Lightning's names of the precisions (``Trainer(precision=...)``) -> the autocast dtype (None: float32).
PRECISIONS: dict[str, torch.dtype | None] = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16,
                                             "16-mixed": torch.float16}


def check_precision(precision: Any) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision name (None for float32).

    Example:
        >>> check_precision("bf16-mixed"), check_precision("32-true")
        (torch.bfloat16, None)

    Raises:
        ValueError: not a name of :data:`PRECISIONS`.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"Expected argument `precision` to be one of {list(PRECISIONS)}, but got {precision!r}.")
    return PRECISIONS[precision]


def check_flag(name: str, value: Any) -> None:
    """Raises ValueError unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"Expected argument `{name}` to be a bool, but got {value!r}.")


def check_positive_int(name: str, value: Any, optional: bool = False) -> None:
    """Raises ValueError unless ``value`` is an int >= 1 (or None with ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected argument `{name}` to be a positive int{' or None' if optional else ''}, but got "
                         f"{value!r}.")


def check_extras(baselines: Any, bootstrap: Any, seed: Any, class_names: Any, names: list[str]) -> list[str]:
    """Check the baseline rows, bootstrap settings and class names; the baselines not already methods."""
    listed = [baselines] if isinstance(baselines, str) else baselines
    if not isinstance(listed, Sequence) or not all(isinstance(n, str) for n in listed):
        raise ValueError(f"Expected argument `baselines` to be a method name or a sequence of names, but got "
                         f"{baselines!r}.")
    for name in listed:
        check_method(name)
    for arg, value, low in (("bootstrap", bootstrap, 0), ("seed", seed, None)):
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise ValueError(f"Expected argument `{arg}` to be an int{' >= 0' if low is not None else ''}, but got "
                             f"{value!r}.")
    if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
        raise ValueError(f"Expected argument `class_names` to be a sequence of names or None, but got "
                         f"{class_names!r}.")
    return [name for name in dict.fromkeys(listed) if name not in names]


def check_batch(batch: Any, index: int, num_classes: int | None) -> int:
    """Validate one batch (keys, shapes, dtypes, mask or box values); returns its number of classes."""
    where = f"batch {index}"
    if not isinstance(batch, Mapping) or not {"image", "labels"} <= set(batch) or not {"mask", "boxes"} & set(batch):
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"Expected {where} to be a dict with 'image', 'labels' and 'mask' (or 'boxes'), but got "
                         f"{keys}.")
    truth = "boxes" if "boxes" in batch else "mask"
    images, labels = batch["image"], batch["labels"]
    if not all(isinstance(t, Tensor) for t in (images, labels, batch[truth])):
        raise ValueError(f"Expected {where}: 'image', 'labels' and '{truth}' to be tensors.")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"Expected {where}: 'image' to be a float [B, 3, H, W] tensor, but got shape "
                         f"{tuple(images.shape)} dtype {images.dtype}.")
    b = images.shape[0]
    if labels.ndim != 2 or labels.shape[0] != b:
        raise ValueError(f"Expected {where}: 'labels' to be [B={b}, K], but got {tuple(labels.shape)}.")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"Expected {where}: 'labels' to have K={num_classes} columns like the first batch, but got "
                         f"{labels.shape[1]}.")
    (_check_boxes if truth == "boxes" else _check_masks)(batch, where, labels.shape[1])
    return labels.shape[1]


def _check_masks(batch: Mapping[str, Any], where: str, k: int) -> None:
    b, _, h, w = batch["image"].shape
    masks = batch["mask"]
    if tuple(masks.shape) != (b, h, w):
        raise ValueError(f"Expected {where}: 'mask' to be [B, H, W] = {(b, h, w)} like 'image', but got "
                         f"{tuple(masks.shape)}.")
    if masks.is_floating_point() or masks.dtype == torch.bool:
        raise ValueError(f"Expected {where}: 'mask' to be an integer tensor, but got dtype {masks.dtype}.")
    bad = (masks < 0) | ((masks > k) & (masks != IGNORE_INDEX))
    if bool(bad.any()):
        raise ValueError(f"Expected {where}: 'mask' values in 0..{k} or {IGNORE_INDEX} (void), but got "
                         f"{int(masks[bad].flatten()[0])}.")


def _check_boxes(batch: Mapping[str, Any], where: str, k: int) -> None:
    b = batch["image"].shape[0]
    boxes, sizes = batch["boxes"], batch.get("box_size")
    if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 6 or not boxes.is_floating_point():
        raise ValueError(f"Expected {where}: 'boxes' to be a float [B={b}, M, 6] tensor (class, x0, y0, x1, y1, "
                         f"difficult), but got shape {tuple(boxes.shape)} dtype {boxes.dtype}.")
    cls = boxes[..., 0]
    if bool(((cls != cls.round()) | (cls < -1) | (cls >= k)).any()):
        raise ValueError(f"Expected {where}: box classes in 0..{k - 1} or -1 (padding), but got "
                         f"{sorted(set(cls.flatten().tolist()))[:10]}.")
    if sizes is not None and (not isinstance(sizes, Tensor) or tuple(sizes.shape) != (b, 2)
                              or sizes.is_floating_point() or bool((sizes < 1).any())):
        raise ValueError(f"Expected {where}: 'box_size' to be a positive integer [B={b}, 2] tensor (height, width), "
                         f"but got {sizes!r:.80}.")


__all__ = [
    "check_batch", "check_extras", "check_flag", "check_methods", "check_positive_int", "check_protocol",
]

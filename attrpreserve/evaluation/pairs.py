"""The ground truth of the scored (image, class) pairs, from segmentation masks or from boxes.

A batch carries either ``mask`` ``[B, H, W]`` (0 background, c+1 class c, 255 void) or ``boxes``
``[B, M, 6]`` with an optional ``box_size`` ``[B, 2]`` (see :mod:`attrpreserve.data.boxes`).
:func:`ground_truth` says which classes an image holds; :func:`pair_targets` builds, for the
pairs chosen, the object region each map is scored against, in the frame where it is scored.

The EBP / TorchRay "difficult" subset flags a pair when its object is small (the object region,
union of the class's boxes or its mask pixels, covers less than 1/4 of the frame) and the image
holds another class (a distractor). TorchRay ships these flags as a file computed once from the
VOC 2007 boxes; here they are computed from each batch's own ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attrpreserve.data.boxes import box_masks
from attrpreserve.data.common import IGNORE_INDEX
SMALL_OBJECT = 0.25
"""A difficult pair's object covers less than this share of the frame (EBP)."""


def present_classes(masks: Tensor, num_classes: int) -> Tensor:
    """``[B, K]`` bool: class c has at least one pixel of value ``c + 1`` in the image's mask.

    Example:
        >>> present_classes(torch.tensor([[[0, 2], [255, 2]]]), num_classes=3)
        tensor([[False,  True, False]])
    """
    values = masks.flatten(1).long()
    values = torch.where((values >= 1) & (values <= num_classes), values, 0)
    present = torch.zeros(values.shape[0], num_classes + 1, dtype=torch.bool, device=masks.device)
    present.scatter_(1, values, True)
    return present[:, 1:]


def box_classes(boxes: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(present [B, K], difficult_only [B, K])``: the class has a box; all its boxes are difficult.

    Example:
        >>> boxes = torch.tensor([[[0, 0, 0, 1, 1, 0], [1, 0, 0, 3, 3, 1], [-1, 0, 0, 0, 0, 0]]]).float()
        >>> [t.tolist() for t in box_classes(boxes, 3)]
        [[[True, True, False]], [[False, True, False]]]
    """
    cls = boxes[..., 0].long()
    one_hot = (cls.clamp(min=0)[..., None] == torch.arange(num_classes, device=boxes.device)) & (cls >= 0)[..., None]
    present = one_hot.any(dim=1)
    easy = (one_hot & (boxes[..., 5] == 0)[..., None]).any(dim=1)
    return present, present & ~easy


def ground_truth(batch: Mapping[str, Any], num_classes: int) -> tuple[Tensor, Tensor]:
    """``(scorable [B, K], present [B, K])``: the classes a protocol may score (for boxes, those
    with a non-difficult box, as TorchRay), and every class the ground truth names."""
    if "boxes" in batch:
        present, difficult_only = box_classes(batch["boxes"], num_classes)
        return present & ~difficult_only, present
    present = present_classes(batch["mask"], num_classes)
    return present, present


@dataclass
class PairTargets:
    """The scored pairs' ground truth in their scoring frame.

    Attributes:
        objects: ``[N, H', W']`` bool object region of each pair.
        ignore: ``[N, H', W']`` bool pixels left out (void, padding outside a smaller frame), or None.
        difficult: ``[N]`` bool, the EBP difficult flag (small object and a distractor).
        frames: ``[N, 2]`` long ``(height, width)`` of each pair's frame when maps must be resized
            to it (boxes with ``box_size``), else None (maps are scored at image resolution).
    """

    objects: Tensor
    ignore: Tensor | None
    difficult: Tensor
    frames: Tensor | None = None

    def frame_maps(self, maps: Tensor) -> Tensor:
        """Maps ``[N, H, W]`` at image resolution -> the scoring frames: each resized bilinearly
        (``align_corners=False``, as TorchRay's ``resize``) to its frame, zero-padded to ``H' x W'``."""
        if self.frames is None:
            return maps
        out = maps.new_zeros(self.objects.shape)
        for size in torch.unique(self.frames, dim=0).tolist():  # one resize per distinct frame
            rows = (self.frames == torch.tensor(size, device=self.frames.device)).all(dim=1).nonzero()[:, 0]
            out[rows, :size[0], :size[1]] = F.interpolate(maps[rows, None], size=tuple(size), mode="bilinear",
                                                          align_corners=False)[:, 0]
        return out


def pair_targets(batch: Mapping[str, Any], image_index: Tensor, classes: Tensor, present: Tensor,
                 count_void: bool, device: torch.device) -> PairTargets:
    """The :class:`PairTargets` of pairs ``(image_index, classes)``; ``present`` ``[B, K]`` from
    :func:`ground_truth` (for the distractor test)."""
    distractor = (present[image_index].sum(dim=1) - present[image_index, classes].long()) > 0
    if "boxes" in batch:
        return _box_targets(batch, image_index, classes, distractor, device)
    masks = batch["mask"].to(device).long()[image_index]
    objects = masks == (classes + 1)[:, None, None]
    ignore = None if count_void else masks == IGNORE_INDEX
    small = objects.flatten(1).float().mean(dim=1) < SMALL_OBJECT
    return PairTargets(objects, ignore, small & distractor)


def _box_targets(batch: Mapping[str, Any], image_index: Tensor, classes: Tensor, distractor: Tensor,
                 device: torch.device) -> PairTargets:
    boxes = batch["boxes"].to(device)
    image_size = torch.tensor(batch["image"].shape[-2:], device=device)
    sizes = batch.get("box_size")
    frames = (image_size.expand(boxes.shape[0], 2) if sizes is None else sizes.to(device).long())[image_index]
    height, width = (int(v) for v in frames.max(dim=0).values)
    objects = box_masks(boxes, image_index, classes, (height, width))
    inside = ((torch.arange(height, device=device)[None, :, None] < frames[:, 0, None, None])
              & (torch.arange(width, device=device)[None, None, :] < frames[:, 1, None, None]))
    objects &= inside
    small = objects.flatten(1).sum(dim=1).double() / frames.prod(dim=1).double() < SMALL_OBJECT
    resize = not bool((frames == image_size).all())
    return PairTargets(objects, None if bool(inside.all()) else ~inside, small & distractor,
                       frames if resize else None)


__all__ = ["PairTargets", "SMALL_OBJECT", "box_classes", "ground_truth", "pair_targets", "present_classes"]

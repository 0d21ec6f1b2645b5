"""Data: PASCAL VOC 2012 (local folder) and synthetic shapes, in one batch format.

Every item is a dict: ``image`` float [3,H,W] (normalised with the module's ``mean``/``std``),
``labels`` float [K] multi-hot, ``mask`` long [H,W] (0 background, c+1 class c, 255 void; on
splits with masks: every synthetic split, VOC's localisation split) and ``index`` (int, the
item's position in its dataset). The default collate turns them into batched dicts.
"""

from attrpreserve.data.common import IGNORE_INDEX, MIN_IMAGE_SIZE
from attrpreserve.data.synthetic import (
    SHAPES, SYNTHETIC_MEAN, SYNTHETIC_STD, SceneConfig, SyntheticDataModule, SyntheticDataset, render_scene,
    shape_mask,
)
from attrpreserve.data.transforms import (
    apply_view, apply_view_to_mask, denormalize, eval_transform, normalize, sample_view, train_transform,
)
from attrpreserve.data.voc import (
    VOC_CLASSES, VOC_LAYOUT, VOC_MEAN, VOC_STD, VOCDataModule, VOCDataset, find_voc_root,
)

__all__ = [
    "IGNORE_INDEX", "MIN_IMAGE_SIZE",
    "VOC_CLASSES", "VOC_LAYOUT", "VOC_MEAN", "VOC_STD", "VOCDataModule", "VOCDataset", "find_voc_root",
    "SHAPES", "SYNTHETIC_MEAN", "SYNTHETIC_STD", "SceneConfig", "SyntheticDataModule", "SyntheticDataset",
    "render_scene", "shape_mask",
    "apply_view", "apply_view_to_mask", "denormalize", "eval_transform", "normalize", "sample_view",
    "train_transform",
]

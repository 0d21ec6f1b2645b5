"""AttributionPanels: teacher | student | mask panels of fixed validation images, to the logger."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from attrpreserve.attribution.methods import attribute, predict_and_attribute
from attrpreserve.callbacks.networks import map_networks
from attrpreserve.models.layers import resolve_layer_name
from attrpreserve.visualize import figure_to_array, panel_figure

log = logging.getLogger(__name__)

MODES = ("swa", "ewa")


class AttributionPanels(Callback):
    """At the first validation epoch, every ``every_n_epochs`` after it and at the last, log one
    image per row: the input, the teacher's and the student's maps (for the teacher's top-1
    class, named on the row) and the mask, for the same fixed validation images, with the maps'
    colour scale and the mask's class legend, so a dashboard shows the maps converge.

    Module contract: a :class:`~attrpreserve.modules.DistillationModule` (``teacher`` and
    ``student``) or a :class:`~attrpreserve.modules.TeacherModule` (``model``: one map column).
    Loggers: ``WandbLogger`` (``log_image``) and ``TensorBoardLogger`` (``add_image``); with any
    other logger it warns once and logs nothing.

    Args:
        num_images: rows, the first validation images (fixed for the whole fit).
        every_n_epochs: how often to log.
        layer: map layer in both networks (``"pool5"``, where the paper matches).
        mode: ``"swa"`` (sensitivity weighted, Grad-CAM-like) or ``"ewa"``.
        key: name of the logged image.

    Raises:
        ValueError: bad argument (at construction); unknown layer (at ``setup``).

    Example:
        >>> AttributionPanels(num_images=4, every_n_epochs=2).state_key
        "AttributionPanels{'key': 'panels/maps'}"
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1, layer: str = "pool5", mode: str = "swa",
                 key: str = "panels/maps") -> None:
        super().__init__()
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"Expected argument `num_images` to be an int >= 1, but got {num_images!r}.")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"Expected argument `every_n_epochs` to be an int >= 1, but got {every_n_epochs!r}.")
        if mode not in MODES:
            raise ValueError(f"Expected argument `mode` to be one of {MODES}, but got {mode!r}.")
        self.num_images, self.every_n_epochs, self.layer, self.mode, self.key = (
            num_images, every_n_epochs, layer, mode, key)
        self._images: list[Tensor] = []
        self._masks: list[Tensor] = []
        self._warned = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key)

    def _networks(self, pl_module: pl.LightningModule) -> dict[str, torch.nn.Module]:
        return map_networks(pl_module, "AttributionPanels")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for net in self._networks(pl_module).values():
            resolve_layer_name(net, self.layer)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        have = sum(len(x) for x in self._images)
        if trainer.sanity_checking or dataloader_idx != 0 or have >= self.num_images:
            return
        take = self.num_images - have
        self._images.append(batch["image"][:take].detach().cpu().clone())
        if "mask" in batch:
            self._masks.append(batch["mask"][:take].detach().cpu().clone())

    def maps(self, pl_module: pl.LightningModule, images: Tensor) -> dict[str, Tensor]:
        """Column name -> ``[N, H, W]`` maps for the first network's top-1 class."""
        return self._maps_and_classes(pl_module, images)[0]

    def _maps_and_classes(self, pl_module: pl.LightningModule, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        # The maps come from the evaluation's own functions (`attribute`), so a panel shows the
        # map `evaluate` scores and the matching loss compares (tests/test_one_map.py).
        networks = list(self._networks(pl_module).items())
        x = images.to(pl_module.device)
        first_name, first = networks[0]
        _, _, classes, heat = predict_and_attribute(
            first, x, lambda logits: (torch.arange(len(logits), device=logits.device), logits.argmax(dim=1)),
            self.mode, layer=self.layer)
        out = {first_name: heat.float().cpu()}
        for name, net in networks[1:]:
            out[name] = attribute(net, x, classes, self.mode, layer=self.layer).float().cpu()
        return out, classes.cpu()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
        if trainer.sanity_checking or not self._images or (trainer.current_epoch % self.every_n_epochs and not last):
            return
        images = torch.cat(self._images)[: self.num_images]
        masks = torch.cat(self._masks)[: self.num_images] if self._masks else None
        maps, classes = self._maps_and_classes(pl_module, images)
        self._log(trainer, images, maps, masks, classes)

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, images: Tensor, maps: dict[str, Tensor], masks: Tensor | None,
             classes: Tensor) -> None:
        datamodule = trainer.datamodule
        denormalize = getattr(datamodule, "denormalize", None) if datamodule is not None else None
        shown = denormalize(images) if callable(denormalize) else _minmax(images)
        names = list(getattr(datamodule, "class_names", None) or [])
        # Each row says which class its maps explain (the first network's top-1).
        titles = [names[c] if c < len(names) else f"class {c}" for c in classes.tolist()]
        fig = panel_figure(shown, maps, masks, titles, names or None)
        array = figure_to_array(fig)
        plt.close(fig)
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.key, images=[array], step=trainer.global_step,
                                 caption=[f"epoch {trainer.current_epoch}: rows = {', '.join(titles)}"])
                logged = True
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.key, array, trainer.global_step, dataformats="HWC")
                logged = True
        if not logged and not self._warned:
            rank_zero_warn("AttributionPanels: no WandbLogger or TensorBoardLogger is attached; panels are not logged.")
            self._warned = True


def _minmax(images: Tensor) -> Tensor:
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(1e-12)

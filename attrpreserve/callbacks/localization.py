"""LocalizationMonitor: point accuracy, AUC and cos to the teacher of each validation epoch."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from attrpreserve.attribution.methods import check_method, get_method
from attrpreserve.callbacks.networks import map_networks
from attrpreserve.evaluate import evaluate
from attrpreserve.evaluation.protocol import PROTOCOLS
from attrpreserve.models.layers import resolve_layer_name

log = logging.getLogger(__name__)


class LocalizationMonitor(Callback):
    """Score the network's attribution maps on a fixed subset of the localisation split at the
    end of validation epochs, so a dashboard shows localisation next to mAP while it trains.

    Logs ``val/point_acc``, ``val/auc`` and, for a distillation, ``val/cos``/``val/l2`` to the
    teacher's maps (same pairs, same method), plus ``val/teacher_point_acc`` and
    ``val/teacher_auc``: the teacher's values, computed once and logged each time as a
    reference line. The same numbers as ``evaluate(..., protocol=protocol, max_images=num_images)``.

    Module contract: a :class:`~attrpreserve.modules.DistillationModule` (``teacher``,
    ``student``) or a :class:`~attrpreserve.modules.TeacherModule` (``model``); the datamodule
    has ``localization_dataset`` after ``setup("test")`` (both of ours do).

    Args:
        num_images: images of the localisation split scored (the first ones; fixed for the fit).
        every_n_epochs: score every n-th validation epoch; the last epoch is always scored.
        method: attribution method (a name of ``attrpreserve.attribution.METHODS``).
        layer: layer of the scored network (``None``: the method's default, ``conv5_3`` for
            Grad-CAM as the paper evaluates).
        teacher_layer: the teacher's layer (default: ``layer``); set it when the architectures
            differ.
        protocol: ``"all"`` (every ground-truth pair: the same pairs for teacher and student) or
            ``"paper"``.
        batch_size: images per attribution batch.

    Raises:
        ValueError: bad argument (at construction), an unknown layer or a datamodule without a
            localisation split (at ``setup``).

    Example:
        >>> LocalizationMonitor(num_images=32).state_key
        "LocalizationMonitor{'method': 'gradcam', 'layer': None}"
    """

    def __init__(self, num_images: int = 64, every_n_epochs: int = 1, method: str = "gradcam",
                 layer: str | None = None, teacher_layer: str | None = None, protocol: str = "all",
                 batch_size: int = 32) -> None:
        super().__init__()
        for name, value in (("num_images", num_images), ("every_n_epochs", every_n_epochs),
                            ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be an int >= 1, but got {value!r}.")
        check_method(method)
        if protocol not in PROTOCOLS:
            raise ValueError(f"Expected argument `protocol` to be one of {sorted(PROTOCOLS)}, but got {protocol!r}.")
        if (layer is not None or teacher_layer is not None) and get_method(method).layer_rule is None:
            raise ValueError(f"Expected no `layer` for the input-space method {method!r}, but got {layer!r}.")
        self.num_images, self.every_n_epochs, self.method = num_images, every_n_epochs, method
        self.layer, self.teacher_layer, self.protocol, self.batch_size = layer, teacher_layer, protocol, batch_size
        self._loader: DataLoader | None = None
        self._teacher: dict[str, float] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, layer=self.layer)

    @staticmethod
    def _networks(pl_module: pl.LightningModule) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(the scored network, its teacher or None)."""
        networks = map_networks(pl_module, "LocalizationMonitor")
        return networks.get("student", networks.get("model")), networks.get("teacher")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network, teacher = self._networks(pl_module)
        if self.layer is not None:
            resolve_layer_name(network, self.layer)
        if teacher is not None and (self.teacher_layer or self.layer) is not None:
            resolve_layer_name(teacher, self.teacher_layer or self.layer)
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("LocalizationMonitor needs a datamodule with a localisation split (none was given).")
        datamodule.setup("test")
        dataset = getattr(datamodule, "localization_dataset", None)
        if dataset is None:
            raise ValueError(f"LocalizationMonitor needs `localization_dataset` on {type(datamodule).__name__} "
                             "after setup('test').")
        subset = Subset(dataset, range(min(self.num_images, len(dataset))))
        self._loader = DataLoader(subset, batch_size=self.batch_size, shuffle=False)

    def _due(self, trainer: pl.Trainer) -> bool:
        last = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
        return last or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _score(self, network: torch.nn.Module, teacher: torch.nn.Module | None, layer: str | None) -> dict[str, Any]:
        kwargs = {self.method: {"layer": layer}} if layer is not None else None
        return evaluate(network, self._loader, methods=[self.method], protocol=self.protocol, teacher=teacher,
                        progress=False, method_kwargs=kwargs, teacher_method_kwargs=self._teacher_kwargs())

    def _teacher_kwargs(self) -> dict[str, dict[str, Any]] | None:
        layer = self.teacher_layer or self.layer
        return {self.method: {"layer": layer}} if layer is not None else None

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._loader is None or not self._due(trainer):
            return
        network, teacher = self._networks(pl_module)
        result = self._score(network, teacher, self.layer)["methods"][self.method]
        values = {"val/point_acc": result["point_acc"], "val/auc": result["auc"]}
        if teacher is not None:
            values.update({"val/cos": result["cos"], "val/l2": result["l2"]})
            if self._teacher is None:  # the teacher is frozen: once is enough
                own = self._score(teacher, None, self.teacher_layer or self.layer)["methods"][self.method]
                self._teacher = {"val/teacher_point_acc": own["point_acc"], "val/teacher_auc": own["auc"]}
            values.update(self._teacher)
        finite = {k: float(v) for k, v in values.items() if v == v}  # nan: no pair scored, nothing to plot
        pl_module.log_dict(finite, on_step=False, on_epoch=True, sync_dist=False)

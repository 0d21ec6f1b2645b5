"""AttributionMatching: make the student's attribution map follow the teacher's (Park et al.)."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from attrpreserve.attribution.maps import ewa_map, feature_grads, sswa_map, swa_map
from attrpreserve.losses import matching_loss
from attrpreserve.models.layers import resolve_layer_name
from attrpreserve.terms import ForwardResult

log = logging.getLogger(__name__)

MODES = ("ewa", "swa", "sswa")
TARGETS = ("teacher_top1", "labels", "per_label")


class MatchingTerm:
    """The loss term :class:`AttributionMatching` registers (usable on its own, see
    :mod:`attrpreserve.terms`): matching loss between teacher and student maps."""

    def __init__(
        self,
        mode: str,
        weight: float,
        drop_prob: float,
        student_layer: str,
        teacher_layer: str,
        target: str,
        per_sample: bool,
        generator: torch.Generator,
        name: str = "match",
    ) -> None:
        self.mode, self.weight, self.drop_prob = mode, weight, drop_prob
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.teacher_grad = mode != "ewa"
        self.target, self.per_sample, self.generator, self.name = target, per_sample, generator, name

    def target_classes(self, batch: dict[str, Tensor], teacher: ForwardResult) -> Tensor:
        """The paper's target: the teacher's top-1 logit per image (same class for the student)."""
        return teacher.logits.detach().argmax(dim=1)

    def _maps(self, result: ForwardResult, features: Tensor, classes: Tensor, is_teacher: bool) -> Tensor:
        if self.mode == "ewa":
            return ewa_map(features)
        # The student's gradient stays in the graph (double backprop) only while training.
        create_graph = not is_teacher and torch.is_grad_enabled() and result.model.training
        # Retained: other classes (target="labels") or other terms may ask the same forward.
        grads = feature_grads(result.logits, features, classes, create_graph=create_graph, retain_graph=True)
        if is_teacher and self.mode == "sswa":
            # Channel drop applies to the teacher's map only, as in the reference.
            return sswa_map(features, grads, self.drop_prob, self.generator, self.per_sample)
        return swa_map(features, grads)

    def maps(self, batch: dict[str, Tensor], teacher: ForwardResult, student: ForwardResult) -> tuple[Tensor, Tensor]:
        """``(teacher_map, student_map)``, each ``[B, 1, H, W]`` (``[P, 1, H, W]``, one per
        image and ground-truth class, with ``target="per_label"``)."""
        t_feat = teacher.features[self.teacher_layers[0]]
        s_feat = student.features[self.student_layers[0]]
        if self.mode == "ewa" or self.target == "teacher_top1":
            classes = self.target_classes(batch, teacher)
            return self._maps(teacher, t_feat, classes, True).detach(), self._maps(student, s_feat, classes, False)
        # Ground-truth classes of each image (the teacher's top-1 where a crop left none), weights
        # in fp32 under mixed precision (see attrpreserve.attribution.maps).
        labels = batch["labels"].to(torch.promote_types(t_feat.dtype, torch.float32))
        top1 = self.target_classes(batch, teacher)
        has_label = labels.sum(dim=1) > 0
        weights = torch.where(has_label[:, None], labels, torch.nn.functional.one_hot(top1, labels.shape[1]).to(labels))
        present = torch.nonzero(weights.sum(dim=0) > 0).flatten().tolist()
        if self.target == "per_label":
            # Every (image, class) pair matched on its own: the pairs the evaluation scores, where
            # top-1 matching trains one map per image and leaves the other objects' to KD.
            t_maps, s_maps = [], []
            for c in present:
                rows = weights[:, c] > 0
                classes = torch.full_like(top1, c)
                t_maps.append(self._maps(teacher, t_feat, classes, True).detach()[rows])
                s_maps.append(self._maps(student, s_feat, classes, False)[rows])
            return torch.cat(t_maps), torch.cat(s_maps)
        # target="labels": mean of the maps of each image's ground-truth classes.
        t_sum, s_sum = 0.0, 0.0
        for c in present:
            classes = torch.full_like(top1, c)
            w = weights[:, c].view(-1, 1, 1, 1)
            t_sum = t_sum + w * self._maps(teacher, t_feat, classes, True).detach()
            s_sum = s_sum + w * self._maps(student, s_feat, classes, False)
        count = weights.sum(dim=1).view(-1, 1, 1, 1)
        return t_sum / count, s_sum / count

    def __call__(self, batch: dict[str, Tensor], teacher: ForwardResult, student: ForwardResult) -> Tensor:
        t_map, s_map = self.maps(batch, teacher, student)
        return matching_loss(s_map, t_map)


class AttributionMatching(Callback):
    """Add ``weight * matching_loss(student_map, teacher_map)`` to a DistillationModule's loss.

    Maps are taken at ``layer`` (student) and ``teacher_layer`` (teacher; default: the same name)
    for the teacher's top-1 class (``target="teacher_top1"``, the paper), averaged over the
    ground-truth classes (``target="labels"``), or for every ground-truth class of every image,
    each pair matched on its own (``target="per_label"``: the pairs localisation is scored on;
    one gradient per class present in the batch). The teacher's gradient comes from its head only
    (its forward is not recorded before the layer); the student's is kept in the graph.

    Module contract: the LightningModule has ``add_loss_term``/``remove_loss_term``, ``teacher``
    and ``student`` (as :class:`~attrpreserve.modules.DistillationModule`).

    Args:
        mode: ``"ewa"``, ``"swa"`` or ``"sswa"`` (stochastic SWA, the paper's best).
        weight: beta, the multiplier of the matching loss (paper: 100).
        drop_prob: fraction of teacher channels dropped per step in SSWA, in [0, 1) (paper: 0.3).
        layer: student layer alias or dotted name (paper: ``"pool5"``).
        teacher_layer: teacher layer (default: ``layer``).
        target: ``"teacher_top1"``, ``"labels"`` or ``"per_label"``.
        per_sample: SSWA draws one channel subset per image instead of one per batch.
        seed: seed of the channel-drop generator (its state is checkpointed).
        name: key of the loss term (``train/<name>``); give several instances different names.

    Raises:
        ValueError: bad argument (at construction), or a layer missing from either model /
            teacher and student with different class counts (at ``setup``, before any step).

    Example:
        >>> AttributionMatching(mode="sswa", weight=100.0, drop_prob=0.3).state_key
        "AttributionMatching{'name': 'match'}"
    """

    def __init__(
        self,
        mode: str = "sswa",
        weight: float = 100.0,
        drop_prob: float = 0.3,
        layer: str = "pool5",
        teacher_layer: str | None = None,
        target: str = "teacher_top1",
        per_sample: bool = False,
        seed: int = 0,
        name: str = "match",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Expected argument `mode` to be one of {MODES}, but got {mode!r}.")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"Expected argument `weight` to be a finite number >= 0, but got {weight!r}.")
        if not (isinstance(drop_prob, (int, float)) and 0.0 <= drop_prob < 1.0):
            raise ValueError(f"Expected argument `drop_prob` to be in [0, 1), but got {drop_prob!r}.")
        if target not in TARGETS:
            raise ValueError(f"Expected argument `target` to be one of {TARGETS}, but got {target!r}.")
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"Expected argument `layer` to be a layer name, but got {layer!r}.")
        self.mode, self.weight, self.drop_prob = mode, float(weight), float(drop_prob)
        self.layer, self.teacher_layer = layer, teacher_layer or layer
        self.target, self.per_sample, self.seed, self.name = target, per_sample, seed, name
        self.generator = torch.Generator().manual_seed(seed)
        self.term: MatchingTerm | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for attr in ("add_loss_term", "teacher", "student"):
            if not hasattr(pl_module, attr):
                raise ValueError(
                    f"AttributionMatching needs a DistillationModule (with teacher, student and add_loss_term); "
                    f"got {type(pl_module).__name__} without `{attr}`."
                )
        # Resolve now: a wrong name fails before any step, listing the valid names.
        s_layer = resolve_layer_name(pl_module.student, self.layer)
        t_layer = resolve_layer_name(pl_module.teacher, self.teacher_layer)
        t_classes = getattr(pl_module.teacher, "num_classes", None)
        s_classes = getattr(pl_module.student, "num_classes", None)
        if t_classes is not None and s_classes is not None and t_classes != s_classes:
            raise ValueError(
                f"Expected teacher and student with the same number of classes, got {t_classes} and {s_classes}."
            )
        log.debug("matching %s at student %s / teacher %s", self.mode, s_layer, t_layer)
        self.term = MatchingTerm(
            self.mode, self.weight, self.drop_prob, self.layer, self.teacher_layer,
            self.target, self.per_sample, self.generator, self.name,
        )
        pl_module.add_loss_term(self.term)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.term is not None and hasattr(pl_module, "remove_loss_term"):
            pl_module.remove_loss_term(self.name)
        self.term = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "mode": self.mode, "seed": self.seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])

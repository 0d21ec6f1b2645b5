"""LightningModules: :class:`TeacherModule` trains a network, :class:`DistillationModule`
compresses it into a student with KD and any registered loss terms (matching, ...).

Neither holds matching or pruning logic: callbacks plug in through :mod:`attrpreserve.terms`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from attrpreserve.attribution.capture import capture_features
from attrpreserve.evaluation.checks import check_protocol
from attrpreserve.evaluation.evaluator import AttributionEvaluator
from attrpreserve.losses import multilabel_kd_loss, softmax_kd_loss
from attrpreserve.metrics import classification_metrics
from attrpreserve.models import CheckpointError, build_from_spec, load_weights, model_spec
from attrpreserve.models.weights import read_checkpoint, weights_source
from attrpreserve.recipe import recipe_changes, training_recipe
from attrpreserve.terms import ForwardResult, LossTerm

NONFINITE = ("raise", "skip")
RECIPE_CHANGES = ("raise", "warn")
TASKS = ("multilabel", "multiclass")
log = logging.getLogger(__name__)
OPTIMIZERS = ("sgd", "adamw")
KD_MODES = ("multilabel", "softmax", None)
LOCALIZATION_FIELDS = ("point_acc", "auc", "energy", "num_pairs")
"""What ``trainer.test`` logs per method with ``test_localization`` (plus ``cos``/``l2`` with a
teacher and ``point_acc_difficult`` under ``test_protocol="torchray"``)."""


def _as_model(model: nn.Module | dict[str, Any], argument: str) -> nn.Module:
    # A dict is the spec saved in a checkpoint's hparams: rebuild, weights come from state_dict.
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, dict) and "arch" in model:
        return build_from_spec(model)
    raise ValueError(
        f"Expected argument `{argument}` to be an nn.Module or a model spec dict with 'arch', but got "
        f"{type(model).__name__}."
    )


def _load_role_weights(model: nn.Module, path: str | os.PathLike | None, role: str) -> dict[str, str] | None:
    """Load ``path`` into ``model`` (see :func:`~attrpreserve.models.load_weights`) and say so.

    Raises:
        FileNotFoundError: the file does not exist (the message names the argument).
    """
    if path is None:
        return None
    if not Path(path).is_file():
        hint = (" Train the teacher first (`attrpreserve fit --config configs/<group>/teacher.yaml` writes "
                "runs/<group>/teacher/checkpoints/last.ckpt) or point the setting at your own teacher's "
                "checkpoint or state dict.") if role != "model" else ""
        raise FileNotFoundError(
            f"Expected argument `{role}_weights` to be a local weights file, but {str(path)!r} does not exist "
            f"(working directory {os.getcwd()!r}).{hint}"
        )
    load_weights(model, path)
    source = weights_source(path)
    rank_zero_info(f"{role} weights: {source['path']} (sha256 {source['sha256']})")
    return source


def _check_recipe_change(value: Any) -> None:
    if value not in RECIPE_CHANGES:
        raise ValueError(f"Expected argument `on_recipe_change` to be one of {RECIPE_CHANGES}, but got {value!r}.")


def _test_methods(value: Any) -> list[str]:
    """The methods ``test_localization`` asks for: none, Grad-CAM (``True``) or the names given."""
    if value is False or value is None:
        return []
    if value is True:
        return ["gradcam"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"Expected argument `test_localization` to be a bool, a method name or a non-empty sequence of "
                     f"names, but got {value!r}.")


def _num_classes(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if n is not None:
        return int(n)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


class NonFiniteLossError(FloatingPointError):
    """A training step's loss was NaN or infinite; the message names the term and the step."""


def rng_states() -> dict[str, Any]:
    """The global random states (torch, CUDA, numpy, Python) as plain tensors, ints and tuples,
    which ``torch.load(weights_only=True)`` (Lightning's default) accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda"):
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class _ClassifierModule(pl.LightningModule):
    """Shared optimiser, task loss and metrics of the teacher and distillation modules."""

    def __init__(
        self,
        num_classes: int,
        task: str,
        lr: float,
        momentum: float,
        weight_decay: float,
        nesterov: bool,
        milestones: Sequence[int],
        gamma: float,
        optimizer: str = "sgd",
        test_localization: bool | str | Sequence[str] = False,
        test_protocol: str = "paper",
        teacher: bool = False,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected argument `optimizer` to be one of {OPTIMIZERS}, but got {optimizer!r}.")
        if task not in TASKS:
            raise ValueError(f"Expected argument `task` to be one of {TASKS}, but got {task!r}.")
        if not lr > 0:
            raise ValueError(f"Expected argument `lr` to be > 0, but got {lr!r}.")
        if not 0 <= momentum < 1:
            raise ValueError(f"Expected argument `momentum` to be in [0, 1), but got {momentum!r}.")
        if weight_decay < 0:
            raise ValueError(f"Expected argument `weight_decay` to be >= 0, but got {weight_decay!r}.")
        if not 0 < gamma <= 1:
            raise ValueError(f"Expected argument `gamma` to be in (0, 1], but got {gamma!r}.")
        if list(milestones) != sorted(milestones) or any(m < 1 for m in milestones):
            raise ValueError(
                f"Expected argument `milestones` to be increasing positive epochs, but got {list(milestones)!r}."
            )
        self.task = task
        self.num_classes = num_classes
        self.val_metrics = classification_metrics(num_classes, prefix="val/")
        self.test_metrics = classification_metrics(num_classes, prefix="test/")
        check_protocol(test_protocol)
        methods = _test_methods(test_localization)
        # Localisation at test time: the same evaluator (and numbers) as `evaluate()`; no baseline
        # rows or bootstrap, which `evaluate()` adds and a test loop does not log.
        self.test_evaluator = AttributionEvaluator(num_classes, methods, test_protocol, teacher=teacher, baselines=(),
                                                   bootstrap=0) if methods else None

    # -- exact resume: the global RNG (dropout) travels with the checkpoint -----------------
    # Lightning restores loops, optimisers and callbacks but not the random generators; with the
    # data side seeded per item (attrpreserve.data.resumable), these states are the rest of what a
    # resumed run needs to repeat the steps of the run it replaces.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank calls this hook (Trainer.save_checkpoint runs on all ranks): keep each one's.
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            checkpoint["rng_states"] = gathered
        else:
            checkpoint["rng_states"] = [states]
        if getattr(self, "_trainer", None) is not None:
            checkpoint["recipe"] = training_recipe(self.trainer, self)
            checkpoint["recipe"]["metrics"] = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                                               if isinstance(v, Tensor) and v.numel() == 1}
            # Which dashboard run this is: `attrpreserve evaluate --wandb` adds its results to it.
            for logger in self.loggers:
                if type(logger).__name__ == "WandbLogger" and logger.version:
                    checkpoint["wandb"] = {"id": logger.version, "project": logger.name,
                                           "save_dir": str(Path(logger.save_dir or ".").resolve()),
                                           "name": getattr(logger, "_name", None)}

    def on_fit_start(self) -> None:
        # The dashboard's config: what Lightning logs (the module's and the data's arguments)
        # lacks the callbacks, the networks and the weights files; they are what runs are
        # grouped and filtered by.
        recipe = training_recipe(self.trainer, self)
        saved = getattr(self, "_saved_recipe", None)
        if saved is not None:
            self._check_resumed_recipe(saved.get("callbacks", {}), recipe["callbacks"])
        for logger in self.loggers:
            logger.log_hyperparams({key: recipe[key] for key in ("callbacks", "networks", "weights", "trainer")})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        self._saved_recipe = checkpoint.get("recipe")

    def _check_resumed_recipe(self, saved: dict[str, Any], current: dict[str, Any]) -> None:
        """A resumed fit trains as the run it continues: matching and pruning callbacks that went
        missing, appeared or changed their settings stop it, unless ``on_recipe_change="warn"``."""
        changes = recipe_changes(saved, current)
        if not changes:
            return
        listed = "; ".join(changes)
        if self.hparams.get("on_recipe_change", "raise") == "warn":
            rank_zero_warn(f"Resuming with a changed training recipe (on_recipe_change='warn'): {listed}.")
            return
        raise ValueError(
            f"The callbacks differ from those of the run that wrote the checkpoint: {listed}. Resume with the "
            "same callbacks and settings, or pass --model.init_args.on_recipe_change warn to continue with the "
            "change (it is logged)."
        )

    def on_train_start(self) -> None:
        # Set here, not at load time: the sanity check and loader set-up of the resumed run come
        # between the two, and the run it replaces had neither at this point.
        states = getattr(self, "_rng_to_restore", None)
        if states:
            rank = self.trainer.global_rank
            state = dict(states[rank] if rank < len(states) else states[0])
            if state.get("torch.cuda") and len(state["torch.cuda"]) != torch.cuda.device_count():
                state.pop("torch.cuda")  # resumed on another machine: CUDA streams cannot be matched
            set_rng_states(state)
        self._rng_to_restore = None

    def _store_specs(self, **specs: dict[str, Any] | None) -> None:
        """Replace network arguments in ``hparams`` by their specs, and drop LightningCLI's keys.

        Under ``attrpreserve fit`` LightningCLI hands ``save_hyperparameters`` its own config
        (``class_path`` dicts for the networks) plus ``_instantiator``/``_class_path``, which
        make ``load_from_checkpoint`` re-parse that config through jsonargparse: a spec dict
        fails there. Our checkpoints rebuild from the specs alone, whoever built the module,
        so the run's config (and the logger's copy) holds the same plain values either way.
        """
        for key in ("_instantiator", "_class_path"):
            self.hparams.pop(key, None)
        self.hparams.update(specs)
        self._hparams_initial = copy.deepcopy(self.hparams)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (overridden: the student's only)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.get("optimizer", "sgd") == "adamw":
            optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                self.trainable_parameters(), lr=hp.lr, momentum=hp.momentum,
                weight_decay=hp.weight_decay, nesterov=hp.nesterov,
            )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.milestones), gamma=hp.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.dtype in (torch.float16, torch.bfloat16):  # mixed precision: the loss in fp32
            logits = logits.float()
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels.argmax(dim=1))

    # -- localisation in trainer.test (opt-in: test_localization) -------------------------
    def _update_localization(self, batch: Any, model: nn.Module, teacher: nn.Module | None = None) -> None:
        """Score the batch's attribution maps when asked for and the batch has masks (or boxes)."""
        if self.test_evaluator is not None and isinstance(batch, Mapping) and ("mask" in batch or "boxes" in batch):
            self.test_evaluator.update(batch, model, teacher)

    def on_test_epoch_start(self) -> None:
        if self.test_evaluator is not None:
            self.test_evaluator.reset()

    def on_test_epoch_end(self) -> None:
        evaluator = self.test_evaluator
        if evaluator is None:
            return
        # every rank must reach compute() (it syncs), so they decide together
        if not self.trainer.strategy.reduce_boolean_decision(evaluator.update_count > 0, all=False):
            rank_zero_warn("test_localization is set, but no test batch had a 'mask' (or 'boxes'): no "
                           "localisation was scored.")
            return
        result = evaluator.compute()
        fields = [*LOCALIZATION_FIELDS, *(("cos", "l2") if evaluator.with_teacher else ()),
                  *(("point_acc_difficult",) if evaluator.rules.average == "class" else ())]
        # synced by the evaluator: every rank logs the same value, nothing left to reduce
        self.log_dict({f"test/{method}/{field}": float(entry[field]) for method, entry in result["methods"].items()
                       for field in fields}, sync_dist=False)
        evaluator.reset()

    def _update_metrics(self, stage: str, logits: Tensor, labels: Tensor) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(torch.sigmoid(logits.detach().float()), labels.long())
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=logits.shape[0])


class TeacherModule(_ClassifierModule):
    """Train a network on labels (the teacher, or a baseline) with the paper's defaults.

    Args:
        model: the network (``vgg16()``, ``vgg_small()``, any classifier), or the spec dict a
            checkpoint stores.
        task: ``"multilabel"`` (BCE, VOC) or ``"multiclass"`` (cross-entropy on argmax labels).
        lr, momentum, weight_decay, nesterov: SGD (paper: 0.1, 0.9, 1e-4).
        milestones, gamma: MultiStepLR (paper: x0.1 at epochs 10, 30, 40 of 60).
        optimizer: ``"sgd"`` (the paper) or ``"adamw"`` (``momentum``/``nesterov`` unused; trains
            small VGGs from scratch on the synthetic data, where SGD stalls).
        on_recipe_change: as :class:`DistillationModule`'s.
        test_localization: also score attribution maps in ``trainer.test`` (as :class:`DistillationModule`'s).
        test_protocol: their protocol (as :class:`DistillationModule`'s).

    Logs ``train/loss``, ``val/loss``, ``val/map`` (per-class VOC mAP), ``val/map_image``
    (per-image AP, the reference code's "mAP") and ``val/f1`` (probability 0.5); the same under
    ``test/`` in ``trainer.test``, with ``test_localization`` also ``test/<method>/point_acc``, ...

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> module = TeacherModule(vgg_small(num_classes=4))
        >>> module.hparams.model["arch"], module.hparams.lr
        ('vgg_small', 0.1)
    """

    def __init__(
        self,
        model: nn.Module,
        task: str = "multilabel",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = False,
        milestones: Sequence[int] = (10, 30, 40),
        gamma: float = 0.1,
        optimizer: str = "sgd",
        on_recipe_change: str = "raise",
        test_localization: bool | str | Sequence[str] = False,
        test_protocol: str = "paper",
    ) -> None:
        model = _as_model(model, "model")
        _check_recipe_change(on_recipe_change)
        num_classes = _num_classes(model)
        if num_classes is None:
            raise ValueError("Expected argument `model` to end in a Linear classifier (no Linear layer found).")
        super().__init__(num_classes, task, lr, momentum, weight_decay, nesterov, milestones, gamma, optimizer,
                         test_localization, test_protocol)
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        # The spec (not the weights) lets load_from_checkpoint rebuild the network.
        self._store_specs(model=model_spec(model))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # A pruned network (masks, removed channels) gets its structure back before the weights.
        from attrpreserve.pruning.surgery import restore_structure

        restore_structure(self.model, checkpoint["state_dict"], prefix="model.")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.model(batch["image"])
        loss = self.task_loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)
        self._update_localization(batch, self.model)

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        logits = self.model(batch["image"])
        self.log(f"{stage}/loss", self.task_loss(logits, batch["labels"]), batch_size=logits.shape[0])
        self._update_metrics(stage, logits, batch["labels"])


class DistillationModule(_ClassifierModule):
    """Distil a frozen teacher into a student: ``alpha * KD + (1 - alpha) * task + sum(terms)``.

    The teacher is frozen (``requires_grad=False``), kept in eval mode whatever Lightning asks,
    never given to the optimiser, and stored once (in ``state_dict`` under ``teacher.``; the
    hparams hold only its spec). Callbacks add loss terms with :meth:`add_loss_term`.

    Args:
        teacher: trained network (or spec dict, when loading a checkpoint).
        student: network to train (or spec dict).
        kd: ``"multilabel"`` (the paper's two-way sigmoid KD), ``"softmax"`` (Hinton KD) or
            ``None`` (labels only: the pruning fine-tunes).
        temperature: KD temperature T (paper: 4); the KD term is scaled by T^2.
        alpha: weight of KD against the task loss (paper: 0.9); ignored when ``kd=None``.
        task: ``"multilabel"`` (BCE) or ``"multiclass"`` (cross-entropy).
        lr, momentum, weight_decay, nesterov, milestones, gamma: SGD + MultiStepLR (paper:
            0.1, 0.9, 1e-4, x0.1 at 150/200/250 of 350 epochs).
        optimizer: ``"sgd"`` (the paper) or ``"adamw"``.
        teacher_weights: local file loaded into ``teacher``: the ``last.ckpt`` of the teacher's
            ``attrpreserve fit`` (a TeacherModule checkpoint) or a plain state dict. The path and
            its SHA-256 go to the run log, the logger's config and ``hparams["weights_sources"]``.
        student_weights: likewise for ``student`` (pruning starts from the teacher's weights).
        on_recipe_change: resuming from a checkpoint whose matching/pruning callbacks differ from
            this fit's (missing, added, other settings) stops with an error listing the
            differences (``"raise"``), or goes on and logs them (``"warn"``).
        nonfinite: a step whose loss is NaN/inf stops the fit with a
            :class:`NonFiniteLossError` naming the term(s) and the step (``"raise"``), or is
            skipped (no optimiser step) and counted in ``train/skipped_steps`` (``"skip"``;
            single process: a rank skipping alone would desynchronise DDP).
        channels_last: store both networks' convolution weights, and feed their inputs, in
            ``torch.channels_last`` memory format (faster convolutions on recent GPUs, above all
            under ``precision="bf16-mixed"``/``"16-mixed"``); results are unchanged up to float
            rounding.
        test_localization: also score the student's attribution maps in ``trainer.test`` on test
            batches that carry a ``mask`` (or ``boxes``): ``True`` for Grad-CAM, or a method name
            or list of names (:mod:`attrpreserve.attribution.methods`). Off by default: maps cost
            a backward per batch. At the end of the test epoch it logs, per method,
            ``test/<method>/point_acc``, ``test/<method>/auc``, ``test/<method>/energy``,
            ``test/<method>/num_pairs`` and the student-teacher ``test/<method>/cos``/``l2``: the
            numbers ``evaluate(module.student, datamodule, methods, protocol=test_protocol,
            teacher=module.teacher)`` gives on the same batches (with TorchRay's averaging also
            ``test/<method>/point_acc_difficult``). The scores live in ``self.test_evaluator``
            (an :class:`~attrpreserve.evaluation.AttributionEvaluator`).
        test_protocol: ``"paper"``, ``"torchray"`` or ``"all"`` (see :mod:`attrpreserve.evaluate`).

    Mixed precision: with ``Trainer(precision="bf16-mixed")`` (or ``"16-mixed"`` on a GPU, with
    Lightning's gradient scaler) both networks, the teacher's head gradient and the student's
    double backward run under autocast; the task, KD and matching losses, the attribution maps
    and the metrics are computed in float32 from explicit casts.

    Raises:
        ValueError: unknown ``kd``/``task``, ``temperature <= 0``, ``alpha`` outside [0, 1],
            teacher and student with different class counts.
        FileNotFoundError: ``teacher_weights``/``student_weights`` names a missing file.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        kd: str | None = "multilabel",
        temperature: float = 4.0,
        alpha: float = 0.9,
        task: str = "multilabel",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = False,
        milestones: Sequence[int] = (150, 200, 250),
        gamma: float = 0.1,
        optimizer: str = "sgd",
        nonfinite: str = "raise",
        teacher_weights: str | None = None,
        student_weights: str | None = None,
        on_recipe_change: str = "raise",
        channels_last: bool = False,
        test_localization: bool | str | Sequence[str] = False,
        test_protocol: str = "paper",
    ) -> None:
        teacher, student = _as_model(teacher, "teacher"), _as_model(student, "student")
        if not isinstance(channels_last, bool):
            raise ValueError(f"Expected argument `channels_last` to be a bool, but got {channels_last!r}.")
        sources = {role: _load_role_weights(net, path, role)
                   for role, net, path in (("teacher", teacher, teacher_weights), ("student", student, student_weights))}
        if nonfinite not in NONFINITE:
            raise ValueError(f"Expected argument `nonfinite` to be one of {NONFINITE}, but got {nonfinite!r}.")
        _check_recipe_change(on_recipe_change)
        if kd not in KD_MODES:
            raise ValueError(f"Expected argument `kd` to be one of {KD_MODES}, but got {kd!r}.")
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"Expected argument `temperature` to be a finite number > 0, but got {temperature!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Expected argument `alpha` to be in [0, 1], but got {alpha!r}.")
        n_teacher, n_student = _num_classes(teacher), _num_classes(student)
        if n_teacher != n_student or n_student is None:
            raise ValueError(
                f"Expected teacher and student with the same number of classes, but the teacher has {n_teacher} "
                f"and the student {n_student} (argument `student`)."
            )
        super().__init__(n_student, task, lr, momentum, weight_decay, nesterov, milestones, gamma, optimizer,
                         test_localization, test_protocol, teacher=True)
        self.teacher = teacher
        self.student = student
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.channels_last = channels_last
        if channels_last:  # 4-D weights only; .to(device) and load_state_dict keep the format
            self.teacher.to(memory_format=torch.channels_last)
            self.student.to(memory_format=torch.channels_last)
        self.save_hyperparameters(ignore=["teacher", "student"])
        # The files were read once; a checkpoint carries the weights, so loading it must not
        # look for the files again (they may not exist where it is loaded): keep provenance only.
        self.weights_sources = {role: source for role, source in sources.items() if source is not None}
        self._store_specs(teacher=model_spec(teacher), student=model_spec(student), teacher_weights=None,
                          student_weights=None, weights_sources=dict(self.weights_sources))
        self._terms: dict[str, LossTerm] = {}
        self.skipped_steps = 0

    # -- the extension point -------------------------------------------------------------
    def add_loss_term(self, term: LossTerm) -> None:
        """Register ``term`` (see :mod:`attrpreserve.terms`); its name must be unique."""
        if not isinstance(term, LossTerm):
            raise ValueError(f"Expected a LossTerm (name, weight, layers, __call__), but got {type(term).__name__}.")
        if term.name in self._terms and self._terms[term.name] is not term:
            raise ValueError(f"A loss term named {term.name!r} is already registered.")
        self._terms[term.name] = term

    def remove_loss_term(self, name: str) -> None:
        self._terms.pop(name, None)

    @property
    def loss_terms(self) -> dict[str, LossTerm]:
        return dict(self._terms)

    def teacher_layers(self) -> list[str]:
        """Teacher layers the registered terms read (what a teacher cache must store)."""
        return sorted({layer for t in self._terms.values() for layer in t.teacher_layers})

    # -- modes and parameters ------------------------------------------------------------
    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teacher.eval()  # BatchNorm statistics of the teacher never move
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        return self.student(self._images(x))

    def _images(self, images: Tensor) -> Tensor:
        """The input batch in the networks' memory format (``channels_last``)."""
        if self.channels_last and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # Runs before the weights load: give the student the checkpoint's structure (pruning
        # masks as weight_orig/weight_mask, physically removed channels) so the keys fit.
        from attrpreserve.pruning.surgery import restore_structure

        restore_structure(self.student, checkpoint["state_dict"], prefix="student.")
        sources = checkpoint.get("hyper_parameters", {}).get("weights_sources") or {}
        self.weights_sources = dict(sources)  # provenance of the run that wrote the checkpoint
        self.hparams["weights_sources"] = dict(sources)

    # -- forward passes ------------------------------------------------------------------
    def forward_teacher(self, images: Tensor, layers: Sequence[str] = (), grad: bool = False) -> ForwardResult:
        """Teacher forward capturing ``layers``; with ``grad`` only the head after them is recorded."""
        cut = grad and bool(layers)
        context = torch.enable_grad() if cut else torch.no_grad()
        with context, capture_features(self.teacher, list(layers), cut_graph=cut) as feats:
            logits = self.teacher(images)
        return ForwardResult(logits=logits, features=dict(feats), model=self.teacher)

    def forward_teacher_cached(
        self, batch: dict[str, Any], layers: Sequence[str] = (), grad: bool = False
    ) -> ForwardResult:
        """Teacher outputs read from a :class:`~attrpreserve.teacher_cache.TeacherCache` batch.

        With ``grad``, the logits are recomputed from the cached features by the teacher's head
        (``teacher.forward_from``), so the gradient w.r.t. the features is exact.
        """
        cached: dict[str, Tensor] = batch["teacher_features"]
        missing = [layer for layer in layers if layer not in cached]
        if missing:
            raise ValueError(
                f"The teacher cache holds layers {sorted(cached)}, but a loss term needs {missing}: rebuild the "
                "cache with these layers (the data module's `cache_layers`)."
            )
        features = {layer: cached[layer] for layer in layers}
        if not (grad and layers):
            return ForwardResult(logits=batch["teacher_logits"], features=features, model=self.teacher)
        if len(layers) != 1 or not hasattr(self.teacher, "forward_from"):
            raise ValueError(
                "Teacher gradients from a cache need one cached layer and a teacher with `forward_from` "
                f"(got layers {list(layers)} and {type(self.teacher).__name__})."
            )
        layer = layers[0]
        with torch.enable_grad():
            feature = features[layer].detach().requires_grad_(True)
            logits = self.teacher.forward_from(layer, feature)
        return ForwardResult(logits=logits, features={layer: feature}, model=self.teacher)

    def forward_student(self, images: Tensor, layers: Sequence[str] = ()) -> ForwardResult:
        with capture_features(self.student, list(layers)) as feats:
            logits = self.student(images)
        return ForwardResult(logits=logits, features=dict(feats), model=self.student)

    def _forward_both(self, batch: dict[str, Tensor]) -> tuple[ForwardResult, ForwardResult]:
        terms = self._terms.values()
        t_layers = sorted({layer for t in terms for layer in t.teacher_layers})
        s_layers = sorted({layer for t in terms for layer in t.student_layers})
        grad = any(t.teacher_grad for t in terms)
        images = self._images(batch["image"])
        if "teacher_logits" in batch:
            teacher = self.forward_teacher_cached(batch, t_layers, grad=grad)
        else:
            teacher = self.forward_teacher(images, t_layers, grad=grad)
        student = self.forward_student(images, s_layers)
        return teacher, student

    def compute_losses(
        self, batch: dict[str, Tensor], teacher: ForwardResult, student: ForwardResult
    ) -> dict[str, Tensor]:
        """Every loss component by name, plus ``loss`` (their weighted sum)."""
        labels = batch["labels"]
        losses: dict[str, Tensor] = {"task": self.task_loss(student.logits, labels)}
        hp = self.hparams
        if hp.kd is None:
            total = losses["task"]
        else:
            kd_fn = multilabel_kd_loss if hp.kd == "multilabel" else softmax_kd_loss
            losses["kd"] = kd_fn(student.logits, teacher.logits.detach(), hp.temperature)
            total = hp.alpha * losses["kd"] + (1 - hp.alpha) * losses["task"]
        for name, term in self._terms.items():
            losses[name] = term(batch, teacher=teacher, student=student)
            total = total + term.weight * losses[name]
        losses["loss"] = total
        return losses

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        teacher, student = self._forward_both(batch)
        losses = self.compute_losses(batch, teacher, student)
        size = student.logits.shape[0]
        if not torch.isfinite(losses["loss"]):
            bad = [k for k, v in losses.items() if k != "loss" and not torch.isfinite(v)]
            detail = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items() if k != "loss")
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            if self.hparams.get("nonfinite", "raise") == "raise":
                raise NonFiniteLossError(
                    f"Non-finite loss at {where}: term(s) {bad or ['loss']} went non-finite ({detail}). Lower the "
                    "learning rate or the term's weight, or pass nonfinite='skip' to skip such steps."
                )
            self.skipped_steps += 1
            log.warning("skipping %s: non-finite %s (%s)", where, bad, detail)
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=size)
            return None
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)
        self._update_localization(batch, self.student, self.teacher)

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        # Map terms need gradients; Lightning evaluates under inference mode, so leave it for
        # this step and work on a normal (non-inference) copy of the images.
        needs_grad = bool(self._terms)
        context = torch.inference_mode(False) if needs_grad else nullcontext()
        with context, (torch.enable_grad() if needs_grad else nullcontext()):
            if needs_grad:
                batch = {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}
            teacher, student = self._forward_both(batch)
            losses = self.compute_losses(batch, teacher, student)
        size = student.logits.shape[0]
        self.log_dict({f"{stage}/{k}": v.detach() for k, v in losses.items()}, batch_size=size)
        self._update_metrics(stage, student.logits, batch["labels"])


def load_module(path: str | os.PathLike) -> TeacherModule | DistillationModule:
    """Load a TeacherModule or DistillationModule checkpoint, whichever ``path`` holds.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated/foreign file, or weights that do not fit the stored spec.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters", {})
    if isinstance(hparams.get("teacher"), dict) and isinstance(hparams.get("student"), dict):
        cls: type[pl.LightningModule] = DistillationModule
    elif isinstance(hparams.get("model"), dict):
        cls = TeacherModule
    else:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is not an attrpreserve checkpoint: its hyper_parameters hold no model spec "
            "('model' for TeacherModule, 'teacher' and 'student' for DistillationModule)."
        )
    try:
        return cls.load_from_checkpoint(path, map_location="cpu")
    except RuntimeError as err:
        spec = hparams.get("student", hparams.get("model"))
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit the architecture it declares ({spec}): {str(err).splitlines()[0]}"
        ) from err


def load_network(path: str | os.PathLike, role: str = "auto") -> nn.Module:
    """The network of a checkpoint: ``role="auto"`` gives a DistillationModule's student or a
    TeacherModule's model; ``"teacher"`` a DistillationModule's teacher. Returned in eval mode."""
    if role not in ("auto", "student", "teacher", "model"):
        raise ValueError(f"Expected argument `role` to be auto, student, teacher or model, but got {role!r}.")
    module = load_module(path)
    if isinstance(module, DistillationModule):
        net = module.teacher if role == "teacher" else module.student
    elif role == "teacher":
        raise ValueError(f"Checkpoint {str(path)!r} is a TeacherModule: it has no separate teacher (use role='auto').")
    else:
        net = module.model
    return net.eval()

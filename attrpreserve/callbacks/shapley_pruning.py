"""ShapleyPruning: prune the student's links by Shapley importance once, at a chosen epoch (SHAP-SAE)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from torch.nn.utils import prune
from typing_extensions import override

from attrpreserve.callbacks.pruning import check_saved_settings
from attrpreserve.pruning.shapley import (
    BASELINES,
    OUTPUTS,
    check_importance_level,
    model_link_importance,
    prune_by_importance,
    resolve_layers,
)
from attrpreserve.pruning.targets import pruned_network

log = logging.getLogger(__name__)


def _first_loader(loaders: Any) -> Iterable[Any]:
    if isinstance(loaders, Mapping):
        return _first_loader(next(iter(loaders.values())))
    if isinstance(loaders, (list, tuple)) and loaders and not isinstance(loaders[0], Tensor):
        return _first_loader(loaders[0])
    return loaders


class ShapleyPruning(Callback):
    """At the start of epoch ``at_epoch``, mask the links below ``importance_level`` of Shapley importance.

    Link importances (:func:`attrpreserve.pruning.link_importance`, mean absolute Shapley value
    of each weight's contribution) are estimated on the first ``num_batches`` training batches;
    each layer keeps the smallest set of links holding ``importance_level`` of its total
    importance and the rest are masked with ``torch.nn.utils.prune`` (the masks stay through
    training; kept weights are unchanged). Logs ``prune/sparsity`` (eta, pruned links / all links
    of the pruned layers) at every training epoch from then on.

    The pruned network is :func:`attrpreserve.pruning.pruned_network`: ``pl_module.student``
    (a DistillationModule), else ``pl_module.model`` (a TeacherModule), else the module itself; a
    ``teacher`` is never touched. ``layers`` are named inside that network. Under DDP the
    importances are averaged over ranks before masking, so every rank applies the same masks.

    Module contract: batches are tensors, dicts with key ``"image"`` or tuples ``(x, ...)``
    (:func:`attrpreserve.pruning.batch_images`).
    To resume from a checkpoint, the LightningModule must re-create the pruning
    reparametrisation (``weight_orig``/``weight_mask``) in ``on_load_checkpoint`` before the
    weights load, as DistillationModule does; the callback's own state (applied flag, masks) then
    restores, and masks are re-applied at train start to any pruned layer that lacks them.

    Args:
        importance_level: ``m`` in (0, 1]: fraction of each layer's total importance kept.
        at_epoch: epoch (>= 0) at whose start pruning happens (the first epoch >= it on resume).
        num_batches: training batches (>= 1) used to estimate the importances.
        layers: dotted names of Linear/Conv2d modules of the pruned network; ``None``: all.
        output: ``"pre"`` (exact, default) or ``"post"`` (after ReLU, permutation sampling).
        num_permutations: permutations per example for ``output="post"`` (>= 1).
        baseline: ``"mean"`` (data mean of each input unit, default) or ``"zero"``.
        seed: seed of the permutation generator.
        verbose: log the per-layer result (rank zero, ``logging`` INFO).

    Raises:
        ValueError: any bad argument (at construction); unknown ``layers`` (at ``setup``, listing
            the valid names).

    Example:
        >>> ShapleyPruning(importance_level=0.9, at_epoch=2).state_key
        "ShapleyPruning{'importance_level': 0.9, 'at_epoch': 2}"
        >>> ShapleyPruning(importance_level=1.5)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `importance_level` to be in (0, 1], but got 1.5.
    """

    def __init__(
        self,
        importance_level: float,
        at_epoch: int = 0,
        num_batches: int = 8,
        layers: Sequence[str] | None = None,
        output: str = "pre",
        num_permutations: int = 64,
        baseline: str = "mean",
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self.importance_level = check_importance_level(importance_level)
        for name, value, low in (("at_epoch", at_epoch, 0), ("num_batches", num_batches, 1),
                                 ("num_permutations", num_permutations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Expected argument `{name}` to be an int >= {low}, but got {value!r}.")
        if layers is not None and (
            isinstance(layers, str) or not layers or not all(isinstance(n, str) and n for n in layers)
        ):
            raise ValueError(
                f"Expected argument `layers` to be None or a non-empty list of layer names, but got {layers!r}."
            )
        if output not in OUTPUTS:
            raise ValueError(f"Expected argument `output` to be one of {OUTPUTS}, but got {output!r}.")
        if baseline not in BASELINES:
            raise ValueError(f"Expected argument `baseline` to be one of {BASELINES}, but got {baseline!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Expected argument `seed` to be an int, but got {seed!r}.")
        self.at_epoch, self.num_batches, self.num_permutations = at_epoch, num_batches, num_permutations
        self.layers = list(layers) if layers is not None else None
        self.output, self.baseline, self.seed, self.verbose = output, baseline, seed, bool(verbose)
        self.applied = False
        self.masks: dict[str, Tensor] = {}
        self.sparsity: float | None = None
        self._pending: dict[str, Tensor] = {}
        self._names: list[str] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(importance_level=self.importance_level, at_epoch=self.at_epoch)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Resolve now: a wrong name fails before any step, listing the valid names.
        self._names = resolve_layers(pruned_network(pl_module), self.layers)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after any checkpoint restore: restored masks go back on any layer whose restored
        # weights did not already carry them.
        model = pruned_network(pl_module)
        for name, mask in self._pending.items():
            module = model.get_submodule(name)
            if not hasattr(module, "weight_mask"):
                prune.custom_from_mask(module, "weight", mask.to(module.weight.device))
        self._pending = {}

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.applied and trainer.current_epoch >= self.at_epoch:
            self._apply(trainer, pl_module)
        if self.applied and self.sparsity is not None:
            pl_module.log("prune/sparsity", self.sparsity, on_step=False, on_epoch=True)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = _first_loader(trainer.train_dataloader)
        if loader is None:
            raise ValueError("ShapleyPruning needs the training dataloader to estimate importances; none was found.")
        model = pruned_network(pl_module)
        generator = torch.Generator().manual_seed(self.seed + trainer.global_rank)
        importances = model_link_importance(
            model, loader, self._names, self.output, self.num_batches, self.num_permutations, generator, self.baseline
        )
        # Same masks on every rank: average the importances first.
        phis = {name: trainer.strategy.reduce(li.phi, reduce_op="mean") for name, li in importances.items()}
        report = prune_by_importance(model, phis, self.importance_level)
        self.masks = {name: model.get_submodule(name).weight_mask.detach().bool().cpu() for name in self._names}
        self.sparsity, self.applied = report.sparsity, True
        if self.verbose and trainer.is_global_zero:
            per_layer = ", ".join(f"{n}: {k}/{t}" for n, (k, t) in report.layers.items())
            log.info("Shapley pruning at epoch %d (m=%s): sparsity %.4f; kept %s",
                     trainer.current_epoch, self.importance_level, report.sparsity, per_layer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "masks": dict(self.masks),
            "sparsity": self.sparsity,
            "importance_level": self.importance_level,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the applied flag, masks and sparsity (masks go back on at train start).

        Raises:
            ValueError: the state was saved with another ``importance_level`` (under a Trainer it
                is part of :attr:`state_key`: a changed one is reported by the module's recipe check).
        """
        check_saved_settings(self, state_dict, {"importance_level": self.importance_level})
        self.applied = bool(state_dict.get("applied", False))
        self.masks = dict(state_dict.get("masks", {}))
        self.sparsity = state_dict.get("sparsity")
        self._pending = dict(self.masks) if self.applied else {}

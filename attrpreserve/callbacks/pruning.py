"""Pruning callbacks: iterative magnitude pruning with masks, and one-shot filter removal.

Both act on the student only (:func:`attrpreserve.pruning.pruned_network`: ``pl_module.student``,
or ``pl_module.model`` for a TeacherModule), never on a teacher, at the start of an epoch (on its first training batch,
before its first optimiser step, so the batch gives the training input size), then rebuild the
optimiser from the module's ``configure_optimizers`` so the fine-tune starts fresh (the paper:
new SGD at lr 1e-3 after every round).

Unlike Lightning's ``ModelPruning`` they keep what a resume needs: the masks stay in the
module's state dict as ``weight_orig``/``weight_mask``, removed channels show in its tensor
shapes, and :func:`attrpreserve.pruning.restore_structure` (called by
``DistillationModule.on_load_checkpoint``) rebuilds both before the weights load; the schedule
position, the rewind snapshot and the resulting channel counts are callback state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_only, rank_zero_warn
from torch import Tensor, nn
from torch.nn.utils import prune
from typing_extensions import override

from attrpreserve.pruning.complexity import check_input_size, count_flops, count_parameters
from attrpreserve.pruning.masks import effective_tensor, is_masked, pruned_tensor_names
from attrpreserve.pruning.surgery import IMPORTANCES, check_rates, conv_layers, plan_removal, remove_channels
from attrpreserve.pruning.targets import PARAMETER_SETS, batch_images, prunable_layers, pruned_network
from attrpreserve.recipe import plain

log = logging.getLogger(__name__)

SCOPES = ("global", "layer")


@rank_zero_only
def _info(message: str, *args: Any) -> None:
    log.info(message, *args)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


student_of = pruned_network  # the name this module used before attrpreserve.pruning existed


def _input_size(batch: Any) -> tuple[int, ...] | None:
    # One sample's input size, from the batch's images (None: no image tensor in the batch).
    try:
        images = batch_images(batch)
    except ValueError:
        return None
    return (1, *images.shape[1:]) if images.dim() >= 2 else None


def check_saved_settings(callback: Callback, state: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise if a setting saved in ``callback``'s checkpoint state differs from the one it was built with.

    Keys missing from ``state`` (older checkpoints) are skipped. The lines read as those of
    :func:`attrpreserve.recipe.recipe_changes` (``Name.key: saved -> current``).

    Raises:
        ValueError: naming each differing setting with its saved and its current value.

    Example:
        >>> check_saved_settings(Callback(), {"rounds": 16}, {"rounds": 4})
        Traceback (most recent call last):
        ...
        ValueError: The checkpoint's Callback state differs: Callback.rounds: 16 -> 4. Resume with the same settings.
    """
    name = type(callback).__name__
    changed = [f"{name}.{key}: {state[key]} -> {value}" for key, value in current.items()
               if key in state and state[key] != value]
    if changed:
        raise ValueError(
            f"The checkpoint's {name} state differs: {'; '.join(changed)}. Resume with the same settings."
        )


class _PruningCallback(Callback):
    """What both callbacks share: the student, the epoch trigger, metrics and the optimiser reset."""

    def __init__(self, input_size: Sequence[int] | None, verbose: bool) -> None:
        super().__init__()
        if input_size is not None:
            input_size = check_input_size(input_size)
        if not isinstance(verbose, bool):
            raise ValueError(f"Expected argument `verbose` to be a bool, but got {verbose!r}.")
        self.input_size: tuple[int, ...] | None = input_size
        self.verbose = verbose
        self._seen_epoch: int | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen_epoch = None  # a new fit counts its epochs afresh

    def _first_batch_of_epoch(self, trainer: pl.Trainer, batch: Any) -> bool:
        # True once per epoch (also on a mid-epoch resume, whose first batch is not batch 0).
        if trainer.sanity_checking or self._seen_epoch == trainer.current_epoch:
            return False
        self._seen_epoch = trainer.current_epoch
        if self.input_size is None:
            size = _input_size(batch)
            if size is None:
                rank_zero_warn(
                    f"{type(self).__name__} found no image tensor in the batch: pass `input_size` to log prune/flops."
                )
            self.input_size = size
        return True

    @staticmethod
    def _rebuild_optimizers(trainer: pl.Trainer) -> None:
        # Optimisers and schedulers from the module's configure_optimizers, as at fit start.
        trainer.strategy.setup_optimizers(trainer)

    def _log_metrics(self, pl_module: pl.LightningModule, student: nn.Module, sparsity: float) -> dict[str, float]:
        values = {"prune/sparsity": float(sparsity), "prune/params": float(count_parameters(student, nonzero=True))}
        if self.input_size is not None:
            values["prune/flops"] = float(count_flops(student, self.input_size, nonzero=True))
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, batch_size=1)
        return values


class UnstructuredPruning(_PruningCallback):
    """Iterative global (or per-layer) magnitude pruning of the student's weights with masks.

    Round ``r`` (1, 2, ..., ``rounds``) runs at the start of epoch
    ``start_epoch + (r - 1) * every_n_epochs`` and brings the pruned tensors to sparsity exactly
    ``1 - (1 - amount) ** r``
    (``amount`` is the fraction of the *remaining* weights; 16 rounds of 0.2 give 97.19 %; with
    a schedule ``amount(epoch)``, ``1 - prod (1 - a_i)`` over the amounts of rounds 1..r, and a
    round whose amount is 0 prunes nothing): the number of zeros is ``round(N * target)`` over
    the ``N`` pruned weights (of all layers for ``scope="global"``, of each layer for
    ``"layer"``), so rounding never accumulates. The smallest-magnitude surviving weights are
    masked; ``torch.nn.utils.prune`` holds the masks (``weight = weight_orig * weight_mask``
    before every forward), so pruned weights stay exactly zero through every optimiser step,
    momentum and weight decay included. At ``setup`` the layers get masks of ones
    (``prune.identity``), so parameter names and order stay the same for the whole fit,
    checkpoints and resumes.

    After each round the surviving weights can be rewound (lottery ticket) and the optimiser
    and scheduler are rebuilt from ``configure_optimizers`` (``reset_optimizer=True``).
    Logs ``prune/sparsity``, ``prune/params`` (non-zero) and ``prune/flops`` (non-zero MACs at
    the training input size) after each round.

    Module contract: the LightningModule holds the network as ``student`` (or ``model``) and,
    to resume a checkpoint, calls :func:`attrpreserve.pruning.restore_structure` in
    ``on_load_checkpoint`` (``DistillationModule`` does). Override :meth:`filter_layers` to prune
    other layers than ``parameters`` selects.

    Args:
        amount: fraction of the remaining weights pruned per round, in (0, 1) (paper: 0.2), or
            a function of the epoch returning that fraction in [0, 1) (as Lightning's
            ``ModelPruning``), called once per round epoch at construction: a pure function of
            the epoch, so a resume repeats the schedule.
        every_n_epochs: epochs between rounds, >= 1 (paper: 30 fine-tune epochs per round).
        rounds: number of rounds, >= 1 (paper: 16).
        scope: ``"global"`` (one magnitude threshold over all pruned tensors, the paper) or
            ``"layer"`` (each tensor pruned to the same sparsity).
        parameters: ``"conv"`` (conv weights, the paper) or ``"conv+linear"``.
        rewind: ``None`` (keep training from the pruned weights, the paper), ``"init"`` (reset
            the student's surviving weights, biases and BatchNorm state to their values when the
            fit started) or an epoch ``k <= start_epoch`` (their values at the start of epoch
            ``k``), after every round.
        start_epoch: epoch of the first round, >= 0.
        reset_optimizer: rebuild optimisers and schedulers after every round.
        input_size: ``(1, C, H, W)`` for ``prune/flops``; default: the first batch's image shape.
        verbose: log each round (``logging``, rank zero).

    Raises:
        ValueError: a bad argument (at construction; a schedule that returns something other
            than a fraction in [0, 1), or 0 at every round); no conv (or linear) layer in the
            student (at ``setup``); a checkpoint state saved with another ``amount`` schedule or
            ``rounds`` (at resume, see :meth:`load_state_dict`).

    Example:
        >>> round(UnstructuredPruning(amount=0.2, rounds=16).target_sparsity(16), 6)
        0.971853
        >>> schedule = UnstructuredPruning(amount=lambda epoch: 0.5 if epoch == 0 else 0.2, every_n_epochs=2, rounds=3)
        >>> schedule.amounts, round(schedule.target_sparsity(3), 6)
        ([0.5, 0.2, 0.2], 0.68)
        >>> UnstructuredPruning(amount=0.2, every_n_epochs=30, rounds=3, start_epoch=1).round_epochs
        [1, 31, 61]
    """

    def __init__(
        self,
        amount: float | Callable[[int], float] = 0.2,
        every_n_epochs: int = 30,
        rounds: int = 16,
        scope: str = "global",
        parameters: str = "conv",
        rewind: str | int | None = None,
        start_epoch: int = 0,
        reset_optimizer: bool = True,
        input_size: Sequence[int] | None = None,
        verbose: bool = True,
    ) -> None:
        if not callable(amount) and (
            isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 < amount < 1.0
        ):
            raise ValueError(
                f"Expected argument `amount` to be a fraction in (0, 1) or a callable of the epoch, but got {amount!r}."
            )
        if not _is_int(every_n_epochs) or every_n_epochs < 1:
            raise ValueError(f"Expected argument `every_n_epochs` to be an int >= 1, but got {every_n_epochs!r}.")
        if not _is_int(rounds) or rounds < 1:
            raise ValueError(f"Expected argument `rounds` to be an int >= 1, but got {rounds!r}.")
        if scope not in SCOPES:
            raise ValueError(f"Expected argument `scope` to be one of {SCOPES}, but got {scope!r}.")
        if parameters not in PARAMETER_SETS:
            raise ValueError(f"Expected argument `parameters` to be one of {PARAMETER_SETS}, but got {parameters!r}.")
        if not _is_int(start_epoch) or start_epoch < 0:
            raise ValueError(f"Expected argument `start_epoch` to be an int >= 0, but got {start_epoch!r}.")
        if not (rewind is None or rewind == "init" or (_is_int(rewind) and rewind >= 0)):
            raise ValueError(
                f"Expected argument `rewind` to be None, 'init' or an epoch (int >= 0), but got {rewind!r}."
            )
        if _is_int(rewind) and rewind > start_epoch:
            raise ValueError(
                f"Expected argument `rewind` to be an epoch <= start_epoch ({start_epoch}) so the weights to rewind to "
                f"exist before the first round, but got {rewind!r}."
            )
        if not isinstance(reset_optimizer, bool):
            raise ValueError(f"Expected argument `reset_optimizer` to be a bool, but got {reset_optimizer!r}.")
        super().__init__(input_size, verbose)
        self.amount = amount if callable(amount) else float(amount)
        self.every_n_epochs, self.rounds = every_n_epochs, rounds
        self.scope, self.parameters, self.rewind = scope, parameters, rewind
        self.start_epoch, self.reset_optimizer = start_epoch, reset_optimizer
        self.amounts = self._round_amounts()
        self.rounds_done = 0
        self.rewind_snapshot: dict[str, Tensor] | None = None
        self._layers: list[tuple[str, nn.Module]] = []

    @property
    @override
    def state_key(self) -> str:
        # A schedule goes by its name, as in the training recipe; its values are checked on load.
        return self._generate_state_key(
            amount=plain(self.amount), every_n_epochs=self.every_n_epochs, rounds=self.rounds, scope=self.scope,
            parameters=self.parameters, start_epoch=self.start_epoch,
        )

    @property
    def round_epochs(self) -> list[int]:
        """Epochs at whose start the rounds run."""
        return [self.start_epoch + i * self.every_n_epochs for i in range(self.rounds)]

    def _round_amounts(self) -> list[float]:
        # The amount of every round, checked once: a schedule is a pure function of the epoch.
        if not callable(self.amount):
            return [self.amount] * self.rounds
        amounts = []
        for epoch in self.round_epochs:
            value = self.amount(epoch)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(
                    f"Expected argument `amount` to return a fraction in [0, 1) at every round epoch "
                    f"{self.round_epochs}, but amount({epoch}) returned {value!r}."
                )
            amounts.append(float(value))
        if not any(amounts):
            raise ValueError(
                f"Expected argument `amount` to prune in some round, but it returns 0 at every round epoch "
                f"{self.round_epochs}."
            )
        return amounts

    def target_sparsity(self, rounds_done: int) -> float:
        """Sparsity of the pruned tensors after ``rounds_done`` rounds: ``1 - (1 - amount) ** rounds_done``
        (``1 - prod (1 - a_i)`` over the first ``rounds_done`` amounts of a schedule)."""
        if not callable(self.amount):
            return 1.0 - (1.0 - self.amount) ** rounds_done
        return 1.0 - math.prod(1.0 - a for a in self.amounts[:rounds_done])

    def filter_layers(self, student: nn.Module) -> list[tuple[str, nn.Module]]:
        """The ``(name, layer)`` whose ``weight`` is pruned; override to choose other layers."""
        return prunable_layers(student, self.parameters)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        student = pruned_network(pl_module)
        self._layers = self.filter_layers(student)
        if not self._layers:
            raise ValueError(
                f"Expected argument `parameters`={self.parameters!r} to select layers of the student, but "
                f"{type(student).__name__} has no such layer."
            )
        for _, layer in self._layers:
            if "weight" not in pruned_tensor_names(layer):
                prune.identity(layer, "weight")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.rewind == "init" and self.rewind_snapshot is None:
            self.rewind_snapshot = self._snapshot(pruned_network(pl_module))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._first_batch_of_epoch(trainer, batch):
            return
        epoch, student = trainer.current_epoch, pruned_network(pl_module)
        if self.rewind == epoch and self.rewind_snapshot is None:
            self.rewind_snapshot = self._snapshot(student)
        # The schedule is a function of the epoch: round i runs at start_epoch + i * every_n_epochs.
        offset = epoch - self.start_epoch
        if offset < 0 or offset % self.every_n_epochs:
            return
        round_index = offset // self.every_n_epochs + 1
        if round_index > self.rounds or round_index <= self.rounds_done:
            return
        if self.amounts[round_index - 1] == 0:  # the schedule skips this round
            self.rounds_done = round_index
            return
        relayout = self._ensure_masks()
        self._prune_to(self.target_sparsity(round_index))
        self.rounds_done = round_index
        if self.rewind is not None:
            self._rewind(student)
        if self.reset_optimizer or relayout:
            self._rebuild_optimizers(trainer)
        eta = 1.0 - sum(int(layer.weight_mask.sum()) for _, layer in self._layers) / sum(
            layer.weight_mask.numel() for _, layer in self._layers
        )
        values = self._log_metrics(pl_module, student, eta)
        if self.verbose:
            _info(
                "UnstructuredPruning round %d/%d at epoch %d: sparsity %.4f (target %.4f), %d non-zero parameters%s",
                round_index, self.rounds, epoch, eta, self.target_sparsity(round_index), int(values["prune/params"]),
                f", {int(values['prune/flops'])} non-zero MACs" if "prune/flops" in values else "",
            )

    def _ensure_masks(self) -> bool:
        # A checkpoint without masks (restored as plain weights) gets masks of ones again; the
        # parameter layout then changed, so the optimiser must be rebuilt whatever reset_optimizer says.
        changed = False
        for _, layer in self._layers:
            if "weight" not in pruned_tensor_names(layer):
                prune.identity(layer, "weight")
                changed = True
        return changed

    @torch.no_grad()
    def _prune_to(self, target: float) -> None:
        # Mask the smallest surviving |w| until round(N * target) of the N weights are masked.
        # The masks are written into the prune buffers in place (one mask per tensor, however
        # many rounds), not stacked as one more CustomFromMask per round as global_unstructured does.
        groups = [self._layers] if self.scope == "global" else [[pair] for pair in self._layers]
        for group in groups:
            masks = [layer.weight_mask for _, layer in group]
            flat_mask = torch.cat([m.flatten() for m in masks])
            wanted = int(math.floor(flat_mask.numel() * target + 0.5))
            extra = wanted - int((flat_mask == 0).sum())
            if extra <= 0:
                continue
            scores = torch.cat([effective_tensor(layer, "weight").abs().flatten() for _, layer in group])
            scores = scores.float().masked_fill(flat_mask == 0, math.inf)
            flat_mask[torch.topk(scores, extra, largest=False, sorted=False).indices] = 0
            for mask, new in zip(masks, torch.split(flat_mask, [m.numel() for m in masks])):
                mask.copy_(new.view_as(mask))
        for _, layer in self._layers:  # the hook refreshes it at the next forward; readers see it now
            layer.weight = layer.weight_orig * layer.weight_mask

    @staticmethod
    def _snapshot(student: nn.Module) -> dict[str, Tensor]:
        # Keyed by plain names (`weight`, not `weight_orig`): valid with or without masks.
        state = student.state_dict()
        return {
            (k[: -len("_orig")] if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in state else k):
            v.detach().cpu().clone()
            for k, v in state.items() if not k.endswith("_mask")
        }

    @torch.no_grad()
    def _rewind(self, student: nn.Module) -> None:
        if self.rewind_snapshot is None:
            raise ValueError(f"UnstructuredPruning(rewind={self.rewind!r}) has no snapshot to rewind to.")
        state = student.state_dict()
        targets = {k: state.get(k, state.get(f"{k}_orig")) for k in self.rewind_snapshot}
        wrong = [k for k, v in self.rewind_snapshot.items() if targets[k] is None or targets[k].shape != v.shape]
        if wrong:
            raise ValueError(
                f"The rewind snapshot does not fit the student (keys {wrong[:3]}): was its structure changed "
                "after the snapshot?"
            )
        for key, value in self.rewind_snapshot.items():
            targets[key].copy_(value)  # state_dict tensors share storage with the parameters
        for _, layer in self._layers:
            layer.weight = layer.weight_orig * layer.weight_mask

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "rounds_done": self.rounds_done,
            "rewind_snapshot": self.rewind_snapshot,
            "input_size": self.input_size,
            "amount": plain(self.amount),
            "amounts": list(self.amounts),
            "rounds": self.rounds,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule position, rewind snapshot and input size.

        Raises:
            ValueError: the state was saved with another ``amount`` (or schedule values) or
                ``rounds``. Under a Trainer a changed float ``amount``, ``rounds`` or schedule
                name changes :attr:`state_key`, so the state does not reach here and the module's
                recipe check reports the change; a schedule that kept its name but changed its
                values is caught here.
        """
        check_saved_settings(
            self, state_dict, {"amount": plain(self.amount), "amounts": self.amounts, "rounds": self.rounds}
        )
        self.rounds_done = int(state_dict.get("rounds_done", 0))
        self.rewind_snapshot = state_dict.get("rewind_snapshot", self.rewind_snapshot)
        size = state_dict.get("input_size")
        if self.input_size is None and size is not None:
            self.input_size = tuple(size)


class StructuredPruning(_PruningCallback):
    """Remove the lowest-L1-norm filters of the student's conv layers, once (Torch-Pruning).

    At the start of epoch ``at_epoch`` each conv layer loses ``round(rate * channels)``
    filters, ranked by the L1 norm of their weights, together with the coupled BatchNorm
    channels, the next conv's input channels and the first linear layer's input columns of
    those channels (see :func:`attrpreserve.pruning.remove_channels`); then the optimiser and
    scheduler are rebuilt from ``configure_optimizers`` (the parameters are new tensors).
    Logs ``prune/sparsity`` (fraction of the unpruned student's conv weights removed),
    ``prune/params`` and ``prune/flops`` (MACs at the training input size).

    Single-process only: DDP wraps the parameters once, so under several processes run
    :func:`~attrpreserve.pruning.remove_channels` on the student before ``fit`` instead.

    Module contract: as :class:`UnstructuredPruning` (``student`` or ``model``, and
    ``restore_structure`` in ``on_load_checkpoint`` so a checkpoint reloads with the removed
    channels).

    Args:
        rates: one fraction in [0, 1) for every conv layer, or one per conv layer in module
            order (paper, VGG16: ``[p, 0, 0, 0, 0, 0, 0, p, p, p, p, p, p]``, p = 0.3 ... 0.7).
        importance: ``"l1"`` (the paper) or ``"l2"`` filter norm.
        at_epoch: epoch at whose start the filters go, >= 0.
        input_size: ``(1, C, H, W)`` for tracing and ``prune/flops``; default: the first
            batch's image shape.
        verbose: log the surgery (``logging``, rank zero).

    Raises:
        ValueError: a bad argument (at construction); at ``setup``: a rate list whose length
            differs from the number of conv layers, a rate that removes every filter of a
            layer, a student without conv layers or with pruning masks, several processes.

    Example:
        >>> StructuredPruning(rates=[0.5, 0, 0, 0.5]).state_key
        "StructuredPruning{'rates': [0.5, 0.0, 0.0, 0.5], 'importance': 'l1', 'at_epoch': 0}"
    """

    def __init__(
        self,
        rates: float | Sequence[float],
        importance: str = "l1",
        at_epoch: int = 0,
        input_size: Sequence[int] | None = None,
        verbose: bool = True,
    ) -> None:
        rates = check_rates(rates, "rates")
        if importance not in IMPORTANCES:
            raise ValueError(f"Expected argument `importance` to be one of {IMPORTANCES}, but got {importance!r}.")
        if not _is_int(at_epoch) or at_epoch < 0:
            raise ValueError(f"Expected argument `at_epoch` to be an int >= 0, but got {at_epoch!r}.")
        super().__init__(input_size, verbose)
        self.rates, self.importance, self.at_epoch = rates, importance, at_epoch
        self.done = False
        self.channels: dict[str, int] = {}
        self.removed: dict[str, list[int]] = {}
        self.dense_weights: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(rates=self.rates, importance=self.importance, at_epoch=self.at_epoch)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        student = pruned_network(pl_module)
        if trainer.world_size > 1:
            raise ValueError(
                f"StructuredPruning removes channels during fit, which a {trainer.world_size}-process run cannot "
                "follow (DDP wraps the parameters once). Remove them before fit with "
                "attrpreserve.pruning.remove_channels(student, rates, example_input=...)."
            )
        if is_masked(student):
            raise ValueError(
                "StructuredPruning needs a student without pruning masks (weight_orig/weight_mask); fold them first "
                "with attrpreserve.pruning.make_permanent."
            )
        if not self.done:  # checked against the network it will prune (state loads after setup)
            plan_removal(student, self.rates, "rates")
            self.dense_weights = sum(conv.weight.numel() for _, conv in conv_layers(student))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if not self.done:
            return
        student = pruned_network(pl_module)
        found = {name: conv.out_channels for name, conv in conv_layers(student)}
        if found != self.channels:
            raise ValueError(
                f"The checkpoint's StructuredPruning removed channels (conv out_channels {self.channels}), but the "
                f"student has {found}: its module must call attrpreserve.pruning.restore_structure in "
                "on_load_checkpoint (DistillationModule does) so the pruned architecture is rebuilt."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._first_batch_of_epoch(trainer, batch) or self.done or trainer.current_epoch < self.at_epoch:
            return
        student = pruned_network(pl_module)
        if self.input_size is None:
            raise ValueError(
                "StructuredPruning needs an example input to trace the student: the batch holds no image tensor, "
                "so pass argument `input_size`."
            )
        first = next(iter(student.parameters()))
        example = torch.zeros(self.input_size, device=first.device, dtype=first.dtype)
        dense = self.dense_weights or sum(conv.weight.numel() for _, conv in conv_layers(student))
        self.removed = remove_channels(student, self.rates, self.importance, example)
        self.channels = {name: conv.out_channels for name, conv in conv_layers(student)}
        self.done = True
        self._rebuild_optimizers(trainer)
        remaining = sum(int(torch.count_nonzero(conv.weight)) for _, conv in conv_layers(student))
        values = self._log_metrics(pl_module, student, 1.0 - remaining / dense)
        if self.verbose:
            _info(
                "StructuredPruning at epoch %d: conv channels %s, %.4f of the conv weights removed, %d parameters%s",
                trainer.current_epoch, list(self.channels.values()), values["prune/sparsity"],
                int(values["prune/params"]),
                f", {int(values['prune/flops'])} MACs" if "prune/flops" in values else "",
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "channels": dict(self.channels),
            "removed": {k: list(v) for k, v in self.removed.items()},
            "dense_weights": self.dense_weights,
            "input_size": self.input_size,
            "rates": self.rates,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what the surgery did (channels, removed filters) and the input size.

        Raises:
            ValueError: the state was saved with other ``rates`` (under a Trainer the rates are
                part of :attr:`state_key`: a changed one is reported by the module's recipe check).
        """
        check_saved_settings(self, state_dict, {"rates": self.rates})
        self.done = bool(state_dict.get("done", False))
        self.channels = dict(state_dict.get("channels", {}))
        self.removed = {k: list(v) for k, v in state_dict.get("removed", {}).items()}
        self.dense_weights = state_dict.get("dense_weights", self.dense_weights)
        size = state_dict.get("input_size")
        if self.input_size is None and size is not None:
            self.input_size = tuple(size)

"""Evaluation protocol: predictive metrics and attribution-map localisation on the localisation split.

``evaluate(model, datamodule_or_dataloader, methods=("gradcam",), protocol="paper")`` runs the
model over batches with masks (or boxes) and reports per-class VOC mAP (``map``), per-image AP
(``map_image``, the reference code's "mAP") and F1 (logit > 0), then, for every attribution
method and every (image, class) pair the protocol keeps:

- **point accuracy** (:class:`~attrpreserve.metrics.PointingGame`, or
  :class:`~attrpreserve.metrics.TorchRayPointingGame` under ``"torchray"``): the map's maximum
  lies on that class's object (within ``tolerance`` pixels), with a bootstrap 95% interval
  ``point_acc_ci`` over the scored pairs;
- **AUC** (:class:`~attrpreserve.metrics.MaskAUROC`): pixel ROC-AUC of the min-max-normalised
  map against the object (maps whose object covers every valid pixel have no AUC), with ``auc_ci``;
- **energy** (:class:`~attrpreserve.metrics.EnergyPointingGame`): the share of the map's
  positive energy on the object (zero-energy maps score 0);
- with a ``teacher``: **cos** and **l2** (:class:`~attrpreserve.metrics.MapSimilarity`) between
  the student's map and the teacher's map of the same pair and method.

The same pairs are scored by the model-free ``baselines`` (default ``center``, a centred
Gaussian: what guessing the image centre scores), reported under ``result["baselines"]`` and as
extra rows of every table. Per-class numbers go to ``result["per_class"]`` and, with ``out``, to
``per_class.csv``/``per_class.png``.

Ground truth: a batch holds ``mask`` ``[B, H, W]`` (0 background, c+1 class c, 255 void; the
object of class c is its pixels) or ``boxes`` ``[B, M, 6]`` with an optional ``box_size``
(see :mod:`attrpreserve.data.boxes`; the object is the union of the class's boxes, and maps are
resized to ``box_size``, the original image, before scoring, as TorchRay does).

Protocols (:data:`PROTOCOLS`):

- ``"paper"`` (Park et al.): only the classes the model predicts positive (logit > 0) are scored,
  exact-pixel pointing game (tolerance 0), point accuracy over all scored maps;
- ``"torchray"``: TorchRay's pointing game (``torchray/benchmark/pointing_game.py``) exactly:
  every ground-truth class is scored except, with boxes, a class whose boxes are all
  ``difficult``; a hit when some object pixel lies strictly within 15 px of the map's first
  maximum; point accuracy is the per-class accuracy averaged over **all** K classes (a class
  without a scored pair counts 0, with a warning). ``point_acc_difficult`` is the same accuracy
  on the EBP difficult subset: pairs whose object covers less than 1/4 of the frame in an image
  holding another class (TorchRay reads these flags from a file made from the VOC 2007 boxes;
  here they come from each batch's ground truth). On masks the 15 px are pixels of the evaluated
  image; TorchRay's are pixels of the original image (give boxes with ``box_size`` for that);
- ``"all"``: every ground-truth class is scored, exact-pixel pointing game, point accuracy over
  all maps. Unlike ``"paper"``, every model is scored on the same pairs, so a model that predicts
  fewer positives is not scored on only its easiest pairs: the fair way to compare students.

Where ``"paper"`` differs from ``"torchray"``: it scores only predicted-positive classes, needs the
maximum on the object itself (0 px), averages over maps instead of classes, and ignores the
``difficult`` flags (masks carry none).

Void mask pixels (255) are left out of every metric (they can neither be the maximum nor count
as object or background) unless ``count_void_as_background=True``, which counts them as
background like the reference scripts. Unlike the reference, each class of an image is scored
against its own mask only, and maps come in batches (one forward per batch for the layer
methods). With a teacher, the pairs are those the *student* keeps under the protocol.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from itertools import chain, islice
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from attrpreserve.evaluation.checks import (
    check_batch, check_extras, check_flag, check_methods, check_positive_int, check_precision, check_protocol,
)
from attrpreserve.evaluation.evaluator import AttributionEvaluator, module_device
from attrpreserve.evaluation.pairs import present_classes
from attrpreserve.evaluation.per_class import write_per_class
from attrpreserve.evaluation.protocol import PROTOCOLS, Protocol
# The report I/O lives in attrpreserve.evaluation.report; these names stay importable from here.
from attrpreserve.evaluation.report import (
    CI_FIELDS, CSV_FIELDS, EXTRA_FIELDS, METHOD_FIELDS, evaluation_provenance, format_table, load_results,
    log_results, log_summary, package_versions, save_results, summary_values,
)


def evaluate(
    model: nn.Module,
    data: pl.LightningDataModule | Iterable[Mapping[str, Any]],
    methods: str | Sequence[str] = ("gradcam",),
    protocol: str = "paper",
    teacher: nn.Module | None = None,
    count_void_as_background: bool = False,
    max_batches: int | None = None,
    progress: bool = True,
    logger: Any = None,
    out: str | os.PathLike | None = None,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    teacher_method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    max_images: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    baselines: str | Sequence[str] = ("center",),
    bootstrap: int = 1000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    faithfulness: bool = False,
    faithfulness_steps: int = 20,
    precision: str = "32-true",
) -> dict[str, Any]:
    """Predictive metrics and, per attribution method, localisation (and teacher agreement) scores.

    Under an initialised ``torch.distributed`` process group (``torchrun``, or after a DDP fit)
    each process scores every ``world_size``-th batch and the metrics and counters are summed
    over the processes: every rank returns the single-process result, rank 0 alone logs and
    writes ``out``.

    The scores accumulate in an :class:`~attrpreserve.evaluation.AttributionEvaluator`, one
    ``update`` per batch; a ``test_step`` can use the same object (``test_localization`` of the
    LightningModules), and the report I/O lives in :mod:`attrpreserve.evaluation.report`.

    Args:
        model: classifier ``[B, 3, H, W] -> [B, K]`` logits (e.g. ``module.student``); used in eval
            mode, its train/eval and ``requires_grad`` state restored afterwards.
        data: a LightningDataModule (its ``test_dataloader()``, the localisation split, after
            ``setup("test")``) or any iterable of batch dicts with ``image`` ``[B, 3, H, W]``,
            ``labels`` ``[B, K]`` multi-hot and ``mask`` ``[B, H, W]`` (0 background, c+1 class c,
            255 void).
        methods: names of :mod:`attrpreserve.attribution.methods` (e.g. ``"gradcam"``, ``"lrp"``).
        protocol: ``"paper"``, ``"torchray"`` or ``"all"`` (see the module docstring).
        teacher: optional reference model; adds ``cos``/``l2`` between student and teacher maps
            (pairs: those the student keeps under the protocol).
        count_void_as_background: count void pixels as background (the reference scripts' way)
            instead of leaving them out.
        max_batches: stop after this many batches (``None``: all).
        progress: show a rich progress bar (on stderr).
        logger: optional Lightning logger; a ``WandbLogger`` gets a ``wandb.Table`` via
            ``log_table``, any other logger the numbers via ``log_metrics`` (key ``evaluate/...``).
        out: optional folder; ``results.json`` and ``results.csv`` are written there.
        method_kwargs: per method, extra arguments of :func:`~attrpreserve.attribution.attribute`
            (``layer`` and knobs), e.g. ``{"ig": {"n_steps": 16}, "lrp": {"composite": "alpha1_beta0"}}``.
        teacher_method_kwargs: the same for the teacher's maps (default: ``method_kwargs``); a
            teacher of another architecture needs its own ``layer`` here.
        max_images: score the first ``max_images`` images only (the last batch is cut).
        provenance: extra entries for ``result["provenance"]`` (the CLI adds the checkpoint, its
            hash and the data root), which already names the networks, each method's layer and
            knobs, the protocol, the image count and the package versions.
        baselines: model-free methods scored on the same pairs as extra rows (default
            ``("center",)``; ``()`` for none); names already in ``methods`` are not repeated.
        bootstrap: bootstrap resamples for ``point_acc_ci``/``auc_ci`` (0: no intervals, nan).
        seed: seed of the bootstrap resampling.
        class_names: K names for ``per_class`` (default: ``data.class_names`` where it exists).
        faithfulness: also run deletion and insertion curves (:mod:`attrpreserve.evaluation.faithfulness`)
            on every scored pair, for every row and for a random pixel order (seeded by ``seed``
            and the batch): ``deletion``/``insertion`` AUCs per row and ``result["faithfulness"]``.
            Costs ``2 * (faithfulness_steps + 1)`` forwards per pair and row.
        faithfulness_steps: stages of the curves.
        precision: ``"32-true"`` (default), ``"bf16-mixed"`` or ``"16-mixed"``, as Lightning's
            ``Trainer(precision=...)``: the networks' forward and backward passes run under
            ``torch.autocast`` with that dtype (on the model's device); the maps, their channel
            collapse, the logits' scores and every metric stay in float32.

    Returns:
        ``{"metrics": {"map", "map_image", "f1", "num_images"}, "methods": {name: {"auc",
        "point_acc", "cos", "l2", "num_pairs", "num_skipped", "energy", "point_acc_difficult",
        "num_pairs_difficult", "point_acc_ci", "auc_ci", "deletion", "insertion"}},
        "baselines": {name: {...same}}, "faithfulness": {"steps", "baseline", "random": {"deletion",
        "insertion"}} (with ``faithfulness=True``),
        "per_class": [{"method", "class", "name", "num_pairs", "point_acc", "auc", "energy"}],
        "protocol": {...}, "provenance": {...}}``: fractions in [0, 1], intervals as ``[low, high]``;
        ``cos``/``l2`` are nan without a teacher (and for baselines); ``point_acc_difficult`` is
        nan outside ``"torchray"``; ``deletion``/``insertion`` are nan without ``faithfulness``;
        ``num_skipped`` counts the ground-truth pairs the protocol left out (difficult-only classes
        included). When no pair is scored (e.g. the model predicts nothing
        positive under ``"paper"``) the localisation numbers are nan, ``num_pairs`` is 0 and a
        warning says why.

    Raises:
        ValueError: before any model work: unknown protocol or method, a knob a method does not
            take, a bad argument, a batch without ``image``/``labels``/``mask`` or with shapes
            that do not fit (also checked for every later batch), or a model whose number of
            outputs differs from the number of labels.

    Example:
        >>> from attrpreserve.data import SyntheticDataModule
        >>> from attrpreserve.models import vgg_small
        >>> dm = SyntheticDataModule(num_classes=3, num_test=4, batch_size=4, num_train=1, num_val=1)
        >>> torch.manual_seed(0) is not None
        True
        >>> result = evaluate(vgg_small(num_classes=3, width_divisor=8), dm, protocol="torchray", progress=False)
        >>> sorted(result["methods"]["gradcam"])[:6], result["metrics"]["num_images"]
        (['auc', 'auc_ci', 'cos', 'deletion', 'energy', 'insertion'], 4)
        >>> list(result["baselines"]), len(result["per_class"])
        (['center'], 6)
    """
    names = _check_arguments(model, methods, protocol, teacher, count_void_as_background, max_batches, progress,
                             method_kwargs)
    check_positive_int("max_images", max_images, optional=True)
    if teacher_method_kwargs is not None:
        check_methods(names, teacher_method_kwargs)
    check_extras(baselines, bootstrap, seed, class_names, names)
    check_flag("faithfulness", faithfulness)
    check_positive_int("faithfulness_steps", faithfulness_steps)
    dtype = check_precision(precision)
    world, rank = _world()
    batches, total = _batches(data, max_batches, world, rank, max_images)
    first = next(batches, None)
    if first is None:
        raise ValueError("Expected argument `data` to yield at least one batch, but it yielded none.")
    num_classes = check_batch(first, 0, None)
    for name, net in (("model", model), ("teacher", teacher)):
        declared = getattr(net, "num_classes", None) if net is not None else None
        if isinstance(declared, int) and declared != num_classes:
            raise ValueError(f"Expected argument `{name}` to have {num_classes} outputs (the batches' labels), "
                             f"but it declares num_classes={declared}.")

    evaluator = AttributionEvaluator(
        num_classes, names, protocol, teacher is not None, count_void_as_background, method_kwargs,
        teacher_method_kwargs, baselines, bootstrap, seed, class_names or getattr(data, "class_names", None),
        faithfulness, faithfulness_steps,
    ).to(device := module_device(model))
    mixed = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    with _Progress(progress and rank == 0, total) as advance, mixed:
        for index, batch in enumerate(chain([first], batches)):
            evaluator.update(batch, model, teacher, batch_index=index * world + rank)
            advance()

    result = evaluator.compute()
    result["per_class"] = evaluator.per_class()
    result["provenance"] = {
        **evaluation_provenance(model, teacher, names, evaluator.method_kwargs, evaluator.teacher_method_kwargs,
                                max_images, max_batches),
        "precision": precision,
        "baselines": list(evaluator.baselines),
        "bootstrap": {"resamples": bootstrap, "seed": seed, "level": 0.95},
        **dict(provenance or {}),
    }
    if rank == 0:
        if logger is not None:
            log_results(logger, result)
        if out is not None:
            save_results(result, out)
            write_per_class(result["per_class"], out)
    return result


def _world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised process group, ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


# -- helpers --------------------------------------------------------------------------------------
def _check_arguments(
    model: Any, methods: Any, protocol: Any, teacher: Any, count_void: Any, max_batches: Any, progress: Any,
    method_kwargs: Any,
) -> list[str]:
    """Check the arguments that need no data (before any model work); the method names."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ValueError(f"Expected argument `teacher` to be a torch.nn.Module or None, but got "
                         f"{type(teacher).__name__}.")
    check_protocol(protocol)
    names = check_methods(methods, method_kwargs)
    check_flag("count_void_as_background", count_void)
    check_flag("progress", progress)
    check_positive_int("max_batches", max_batches, optional=True)
    return names


def _first_images(batches: Iterator[Mapping[str, Any]], limit: int) -> Iterator[Mapping[str, Any]]:
    """The batches up to ``limit`` images in all, the last one cut."""
    left = limit
    for batch in batches:
        if left <= 0:
            return
        size = batch["image"].shape[0] if isinstance(batch, Mapping) and isinstance(batch.get("image"), Tensor) else 0
        if size > left:
            batch = {k: v[:left] if isinstance(v, Tensor) and v.ndim and v.shape[0] == size else v
                     for k, v in batch.items()}
            size = left
        left -= size
        yield batch


def _batches(data: Any, max_batches: int | None, world: int = 1, rank: int = 0,
             max_images: int | None = None) -> tuple[Iterator[Mapping[str, Any]], int | None]:
    """The batches this process scores: every ``world``-th from ``rank`` under a process group
    (each batch once, so the synced metrics equal a single process's), the first ``max_batches``
    (and ``max_images`` images) of the whole stream at most."""
    if isinstance(data, pl.LightningDataModule):
        data.setup("test")
        data = data.test_dataloader()
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise ValueError(f"Expected argument `data` to be a LightningDataModule or an iterable of batch dicts, "
                         f"but got {type(data).__name__}.")
    try:
        total: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    iterator = iter(data)
    if max_batches is not None:
        iterator = (batch for _, batch in zip(range(max_batches), iterator))
    if max_images is not None:
        batch_size = getattr(data, "batch_size", None)
        if total is not None and isinstance(batch_size, int) and batch_size > 0:
            total = min(total, math.ceil(max_images / batch_size))
        iterator = _first_images(iterator, max_images)
    if world > 1:
        if total is not None and total < world:
            raise ValueError(f"Expected argument `data` to yield at least one batch per process, but it yields "
                             f"{total} batches for {world} processes: lower `batch_size` or the process count.")
        iterator = islice(iterator, rank, None, world)
        total = None if total is None else len(range(rank, total, world))
    return iterator, total


class _Progress:
    """Context manager yielding an ``advance()`` callable: a rich progress bar on a terminal's
    stderr, plain lines about every tenth of the way when stderr is a file or pipe (a bar there
    prints nothing until the end), or nothing."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def _plain(self) -> Any:
        import sys
        import time

        started, done = time.perf_counter(), [0]
        step = max(1, (self.total or 10) // 10)

        def advance() -> None:
            done[0] += 1
            if done[0] % step == 0 or done[0] == self.total:
                of = f"/{self.total}" if self.total else ""
                print(f"evaluate: {done[0]}{of} batches, {time.perf_counter() - started:.1f} s", file=sys.stderr,
                      flush=True)

        return advance

    def __enter__(self) -> Any:
        import sys

        if not self.enabled:
            return lambda: None
        if not sys.stderr.isatty():
            return self._plain()
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=False)
        self.bar.__enter__()
        task = self.bar.add_task("evaluate", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


__all__ = [
    "PROTOCOLS", "Protocol", "evaluate", "format_table", "load_results", "log_results", "log_summary",
    "package_versions", "present_classes", "save_results", "summary_values",
]

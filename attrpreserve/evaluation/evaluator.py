"""The evaluator: every metric of an evaluation as one object, fed batch by batch.

:class:`AttributionEvaluator` holds, per attribution method (and per model-free baseline), the
row's metrics (:class:`~attrpreserve.evaluation.rows.RowMetrics`: pointing game, mask AUC,
energy, cos/l2 to the teacher's maps), the predictive metrics (mAP, F1), the per-pair records
and the pair counters. Like a torchmetrics ``MetricCollection`` it has ``update``, ``compute``,
``reset`` and moves with ``.to(device)``; it is an ``nn.Module``, so as an attribute of a
LightningModule it follows the module to its device. Every state is a torchmetrics state, so
under DDP ``compute()`` sums or gathers them over the processes.

:func:`attrpreserve.evaluate.evaluate` is a loop over batches around one evaluator; a
``test_step`` can call :meth:`AttributionEvaluator.update` the same way (see
``test_localization`` of :class:`~attrpreserve.modules.TeacherModule`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from attrpreserve.attribution.maps import full_precision
from attrpreserve.attribution.methods import attribute, attribution_scope, get_method, predict_and_attribute
from attrpreserve.evaluation.checks import (
    check_batch, check_extras, check_flag, check_methods, check_positive_int, check_protocol,
)
from attrpreserve.evaluation.faithfulness import faithfulness_aucs
from attrpreserve.evaluation.pairs import ground_truth, pair_targets
from attrpreserve.evaluation.per_class import per_class_rows
from attrpreserve.evaluation.records import PairRecords
from attrpreserve.evaluation.rows import (
    RowMetrics, compute_quietly, faithfulness_metrics, faithfulness_values, records_of,
)
from attrpreserve.metrics import classification_metrics


class PairCounts(Metric):
    """Images seen, (image, class) pairs scored and ground-truth pairs the protocol left out.

    Example:
        >>> counts = PairCounts()
        >>> counts.update(images=4, pairs=3, skipped=1)
        >>> counts.compute()
        {'images': 4, 'pairs': 3, 'skipped': 1}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("images", "pairs", "skipped"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: int, pairs: int, skipped: int) -> None:
        self.images += images
        self.pairs += pairs
        self.skipped += skipped

    def compute(self) -> dict[str, int]:
        return {"images": int(self.images), "pairs": int(self.pairs), "skipped": int(self.skipped)}


class _Faithfulness(nn.Module):
    """Deletion/insertion settings and the random-order reference (synced means)."""

    def __init__(self, steps: int, seed: int) -> None:
        super().__init__()
        self.steps, self.seed = steps, seed
        self.random = faithfulness_metrics()

    def aucs(self, model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, maps: Tensor,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return faithfulness_aucs(model, images, classes, maps, self.steps, generator=generator, image_index=image_index)

    def update_random(self, model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor,
                      batch_index: int) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_index)
        for mode, values in self.aucs(model, images, image_index, classes, images[image_index, 0], generator).items():
            self.random[mode].update(values)


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters are (the CPU without parameters)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _single_process_order(batch: Tensor, pair: Tensor) -> Tensor:
    """The permutation that sorts gathered records by (batch, pair): one process's order.

    Example:
        >>> _single_process_order(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
        tensor([2, 0, 1])
    """
    key = batch.double() * (float(pair.max()) + 1 if pair.numel() else 1.0) + pair.double()
    return torch.argsort(key, stable=True)


class AttributionEvaluator(nn.Module):
    """Predictive metrics and, per attribution method, localisation (and teacher agreement),
    accumulated over batches: what :func:`~attrpreserve.evaluate.evaluate` reports.

    Args:
        num_classes: K, the number of labels.
        methods: names of :mod:`attrpreserve.attribution.methods` (e.g. ``"gradcam"``).
        protocol: ``"paper"``, ``"torchray"`` or ``"all"`` (see :mod:`attrpreserve.evaluate`).
        teacher: keep cos/l2 between the scored network's maps and a teacher's (pass the teacher
            to :meth:`update`).
        count_void_as_background: count void mask pixels as background instead of leaving them out.
        method_kwargs: per method, extra arguments of :func:`~attrpreserve.attribution.attribute`.
        teacher_method_kwargs: the same for the teacher's maps (default: ``method_kwargs``).
        baselines: model-free methods scored on the same pairs as extra rows.
        bootstrap: bootstrap resamples of the intervals (0: none, nan).
        seed: seed of the bootstrap and of the random pixel order.
        class_names: K names for the predictive metrics and :meth:`per_class` (others are ignored).
        faithfulness: also keep deletion/insertion AUCs per row and for a random pixel order.
        faithfulness_steps: stages of those curves.

    Raises:
        ValueError: a bad argument (an unknown protocol, method or knob, ...), at construction.

    Example:
        >>> from attrpreserve.data import SyntheticDataModule
        >>> from attrpreserve.models import vgg_small
        >>> dm = SyntheticDataModule(num_classes=3, num_test=4, batch_size=2, num_train=1, num_val=1)
        >>> dm.setup("test")
        >>> torch.manual_seed(0) is not None
        True
        >>> model = vgg_small(num_classes=3, width_divisor=8)
        >>> evaluator = AttributionEvaluator(3, "gradcam", protocol="all", bootstrap=0)
        >>> for batch in dm.test_dataloader():
        ...     evaluator.update(batch, model)
        >>> result = evaluator.compute()
        >>> result["metrics"]["num_images"], result["methods"]["gradcam"]["num_pairs"], list(result["baselines"])
        (4, 7, ['center'])
    """

    def __init__(
        self,
        num_classes: int,
        methods: str | Sequence[str] = ("gradcam",),
        protocol: str = "paper",
        teacher: bool = False,
        count_void_as_background: bool = False,
        method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        teacher_method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        baselines: str | Sequence[str] = ("center",),
        bootstrap: int = 1000,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        faithfulness: bool = False,
        faithfulness_steps: int = 20,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        self.rules = check_protocol(protocol)
        names = check_methods(methods, method_kwargs)
        if teacher_method_kwargs is not None:
            check_methods(names, teacher_method_kwargs)
        extra = check_extras(baselines, bootstrap, seed, class_names, names)
        for flag, value in (("teacher", teacher), ("count_void_as_background", count_void_as_background),
                            ("faithfulness", faithfulness)):
            check_flag(flag, value)
        check_positive_int("faithfulness_steps", faithfulness_steps)
        self.num_classes, self.protocol, self.methods, self.baselines = num_classes, protocol, names, extra
        self.with_teacher = teacher
        self.count_void, self.bootstrap, self.seed = count_void_as_background, bootstrap, seed
        self.method_kwargs = {name: dict((method_kwargs or {}).get(name, {})) for name in names}
        self.teacher_method_kwargs = {name: dict((teacher_method_kwargs or method_kwargs or {}).get(name, {}))
                                      for name in names}
        self.class_names = list(class_names) if class_names is not None and len(class_names) == num_classes \
            else None
        self.predictive = classification_metrics(num_classes, class_names=self.class_names)
        self.rows = nn.ModuleDict({name: RowMetrics(self.rules.tolerance, self.rules.average, num_classes,
                                                    teacher and name in names, faithfulness)
                                   for name in [*names, *extra]})
        # batch/pair: each pair's place in the single-process order; processes gather their records
        # rank by rank, and the bootstrap must resample the same sequence however many there were.
        self.pairs = PairRecords(("classes", "difficult", "batch", "pair"))
        self.counts = PairCounts()
        self.faithfulness = _Faithfulness(faithfulness_steps, seed) if faithfulness else None
        self.update_count = 0

    def update(self, batch: Mapping[str, Any], model: nn.Module, teacher: nn.Module | None = None,
               batch_index: int | None = None) -> None:
        """Score one batch: predict, pick the pairs the protocol keeps, attribute and score them.

        Works inside ``torch.no_grad``/``torch.inference_mode`` (a ``test_step``): attribution
        runs in :func:`~attrpreserve.attribution.methods.attribution_scope`, which restores the
        networks' modes and ``requires_grad`` flags afterwards.

        Args:
            batch: ``image`` ``[B, 3, H, W]``, ``labels`` ``[B, K]`` multi-hot and ``mask``
                ``[B, H, W]`` (or ``boxes``, see :mod:`attrpreserve.evaluate`).
            model: the scored classifier ``[B, 3, H, W] -> [B, K]``; its device is where the batch goes.
            teacher: the reference network of cos/l2 (constructed with ``teacher=True``).
            batch_index: the batch's place in the whole stream (orders the pairs for the bootstrap
                and seeds the random pixel order); default: the number of updates so far.

        Raises:
            ValueError: a batch with missing keys, wrong shapes or values, or a model output that
                is not ``[B, K]``.
        """
        check_batch(batch, self.update_count, self.num_classes)
        index = self.update_count if batch_index is None else batch_index
        self.update_count += 1
        device = module_device(model)
        images, labels = batch["image"].to(device), batch["labels"].to(device)
        scorable, present = (t.to(device) for t in ground_truth(batch, self.num_classes))
        with attribution_scope(model, teacher):
            logits, image_index, classes, shared = self._predict(model, images, scorable)
            self.predictive.update(full_precision(logits).sigmoid(), labels.round().int())  # fp32 under autocast
            self.counts.update(images.shape[0], image_index.numel(), int(present.sum()) - image_index.numel())
            if image_index.numel() == 0:
                return
            targets = pair_targets(batch, image_index, classes, present, self.count_void, device)
            self.pairs.update(classes=classes, difficult=targets.difficult,
                              batch=torch.full_like(classes, index, dtype=torch.float32),
                              pair=torch.arange(classes.numel(), device=classes.device, dtype=torch.float32))
            for name, row in self.rows.items():
                maps = shared.pop(name, None)
                if maps is None:
                    maps = attribute(model, images, classes, name, image_index=image_index, normalize=True,
                                     **self.method_kwargs.get(name, {}))
                teacher_maps = None
                if teacher is not None and name in self.methods:
                    on = module_device(teacher)
                    teacher_maps = attribute(teacher, images.to(on), classes.to(on), name,
                                             image_index=image_index.to(on), normalize=True,
                                             **self.teacher_method_kwargs[name])
                # maps come min-max normalised from `attribute`, targets are ours: no re-validation
                row.update(maps, targets, classes, teacher_maps)
                if self.faithfulness is not None:
                    row.update_faithfulness(self.faithfulness.aucs(model, images, image_index, classes, maps))
            if self.faithfulness is not None:
                self.faithfulness.update_random(model, images, image_index, classes, index)

    def _predict(self, model: nn.Module, images: Tensor,
                 scorable: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``(logits, image_index, classes, {method: maps})``: the pairs the protocol keeps and
        the maps of the first layer method (Grad-CAM, SWA, EWA), which shares the prediction's forward."""
        expected = (images.shape[0], self.num_classes)

        def select(logits: Tensor) -> tuple[Tensor, Tensor]:
            if tuple(logits.shape) != expected:
                raise ValueError(f"Expected the model output to be [B={expected[0]}, K={expected[1]}] logits, "
                                 f"but got {tuple(logits.shape)}.")
            keep = scorable & (logits > 0) if self.rules.predicted_only else scorable
            return keep.nonzero(as_tuple=True)

        first = next((name for name in self.methods if get_method(name).layer_rule is not None), None)
        if first is not None:
            logits, image_index, classes, maps = predict_and_attribute(
                model, images, select, first, normalize=True, **self.method_kwargs[first])
            return logits, image_index, classes, {first: maps}
        with torch.no_grad():
            logits = model(images)
        return (logits, *select(logits), {})

    def compute(self) -> dict[str, Any]:
        """``{"metrics", "methods", "baselines", "protocol"}`` (and ``"faithfulness"``), as in
        :func:`~attrpreserve.evaluate.evaluate`'s result; synced over processes. Warns when no
        pair was scored, or (TorchRay averaging) when a class had no scored pair."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty metrics: one warning of ours replaces theirs
            warnings.filterwarnings("default", message=".*no positive target.*")  # but say which classes mAP skips
            scores = self.predictive.compute()
        counts = compute_quietly(self.counts)
        metrics: dict[str, Any] = {key: float(value) for key, value in scores.items()}
        metrics["num_images"] = counts["images"]
        scored = counts["pairs"] > 0
        shared = records_of(self.pairs)
        order = _single_process_order(shared["batch"], shared["pair"])
        classes, difficult = shared["classes"].long()[order], shared["difficult"].bool()[order]
        entries: dict[str, dict[str, Any]] = {}
        for name, row in self.rows.items():
            entry = row.entry(scored, classes, difficult, self.bootstrap, self.seed, order)
            entry["num_pairs"], entry["num_skipped"] = counts["pairs"], counts["skipped"]
            entries[name] = entry
        self._warn_unscored(scored, counts["skipped"], classes)
        rules = self.rules
        result = {
            "metrics": metrics,
            "methods": {name: entries[name] for name in self.methods},
            "baselines": {name: entries[name] for name in self.baselines},
            "protocol": {"name": self.protocol, "predicted_only": rules.predicted_only,
                         "tolerance": rules.tolerance, "average": rules.average,
                         "count_void_as_background": self.count_void},
        }
        if self.faithfulness is not None:
            result["faithfulness"] = {"steps": self.faithfulness.steps, "baseline": 0.0,
                                      "random": faithfulness_values(self.faithfulness.random)}
        return result

    def _warn_unscored(self, scored: bool, skipped: int, classes: Tensor) -> None:
        if not scored:
            why = (f"the model predicted none of the {skipped} ground-truth (image, class) pairs positive "
                   "(logit > 0)" if self.rules.predicted_only else "the masks hold no class pixels")
            warnings.warn(
                f"evaluate: no (image, class) pair was scored under protocol {self.protocol!r}: {why}. The "
                f"localisation metrics (auc, point_acc, cos, l2) of {', '.join(self.methods)} are nan and "
                "num_pairs is 0.", UserWarning, stacklevel=4)
        elif self.rules.average == "class":
            unseen = sorted(set(range(self.num_classes)) - set(classes.tolist()))
            if unseen:
                warnings.warn(f"evaluate: protocol {self.protocol!r} averages point accuracy over all classes as "
                              f"TorchRay does; classes {unseen} had no scored pair and count as 0.", UserWarning,
                              stacklevel=4)

    def per_class(self) -> list[dict[str, Any]]:
        """``[{"method", "class", "name", "num_pairs", "point_acc", "auc", "energy"}]`` per row and
        class (see :func:`~attrpreserve.evaluation.per_class.per_class_rows`); synced."""
        classes = records_of(self.pairs)["classes"]
        return per_class_rows({name: row.record_values() for name, row in self.rows.items()}, classes,
                              self.num_classes, self.class_names)

    def reset(self) -> None:
        """Forget every batch. Runs outside inference mode, so the fresh states accept the
        in-place updates of a later :meth:`update` (Lightning calls epoch hooks in inference mode)."""
        with torch.inference_mode(False):
            self.predictive.reset()  # the collection's own reset keeps its compute groups linked
            for row in self.rows.values():
                row.reset()
            self.pairs.reset()
            self.counts.reset()
            if self.faithfulness is not None:
                for metric in self.faithfulness.random.values():
                    metric.reset()
        self.update_count = 0


__all__ = ["AttributionEvaluator", "PairCounts", "module_device"]

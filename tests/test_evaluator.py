"""The evaluator object: the same numbers as evaluate(), from a loop or from trainer.test, and the
report I/O in its own module."""

from __future__ import annotations

import importlib
import json
import math
import multiprocessing
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score

from attrpreserve.attribution.methods import attribute
from attrpreserve.data import SyntheticDataModule
from attrpreserve.data.common import IGNORE_INDEX
from attrpreserve.evaluate import evaluate
from attrpreserve.evaluation import AttributionEvaluator, present_classes
from attrpreserve.evaluation import report
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule, TeacherModule

K = 3


def _data() -> SyntheticDataModule:
    dm = SyntheticDataModule(num_classes=K, image_size=32, object_size=(0.2, 0.4), num_train=2, num_val=2,
                             num_test=6, batch_size=4, void_border=1)
    dm.setup("test")
    return dm


def _nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return vgg_small(num_classes=K, width_divisor=8), vgg_small(num_classes=K, width_divisor=8)


def _oracle(model: torch.nn.Module, dm: SyntheticDataModule) -> tuple[float, float]:
    """Point accuracy and mean AUC of Grad-CAM on every ground-truth pair (protocol "all"), pair by
    pair: argmax over the non-void pixels, sklearn's ROC-AUC on them."""
    hits, aucs = [], []
    model.eval()
    for batch in dm.test_dataloader():
        present = present_classes(batch["mask"], K)
        image_index, classes = present.nonzero(as_tuple=True)
        maps = attribute(model, batch["image"], classes, "gradcam", image_index=image_index, normalize=True)
        for n, (i, c) in enumerate(zip(image_index.tolist(), classes.tolist())):
            mask = batch["mask"][i].flatten()
            valid = mask != IGNORE_INDEX
            scores = maps[n].flatten().detach().double()
            point = torch.where(valid, scores, torch.tensor(-math.inf, dtype=scores.dtype)).argmax()
            hits.append(float(mask[point] == c + 1))
            objects = (mask[valid] == c + 1).numpy()
            if 0 < objects.sum() < objects.size:
                aucs.append(roc_auc_score(objects, scores[valid].numpy()))
    return sum(hits) / len(hits), sum(aucs) / len(aucs)


def test_evaluator_equals_evaluate_and_an_oracle():
    student, teacher = _nets()
    dm = _data()
    expected = evaluate(student, dm, methods=["gradcam", "swa"], protocol="torchray", teacher=teacher,
                        progress=False, bootstrap=50)
    evaluator = AttributionEvaluator(K, ["gradcam", "swa"], protocol="torchray", teacher=True, bootstrap=50,
                                     class_names=dm.class_names)
    for _ in range(2):  # the second pass after reset() must give the same numbers again
        evaluator.reset()
        for batch in dm.test_dataloader():
            evaluator.update(batch, student, teacher)
        result = evaluator.compute()
        for key in ("metrics", "methods", "baselines", "protocol"):
            assert _same(result[key], expected[key]), key
        assert _same(evaluator.per_class(), expected["per_class"])
    assert expected["methods"]["gradcam"]["num_pairs"] > 0 and not math.isnan(expected["methods"]["gradcam"]["cos"])

    point_acc, auc = _oracle(student, dm)
    every_pair = AttributionEvaluator(K, "gradcam", protocol="all", bootstrap=0)
    for batch in dm.test_dataloader():
        every_pair.update(batch, student)
    entry = every_pair.compute()["methods"]["gradcam"]
    assert entry["point_acc"] == pytest.approx(point_acc, abs=1e-6)
    assert entry["auc"] == pytest.approx(auc, abs=1e-5)


def test_evaluator_checks_its_arguments_at_construction():
    with pytest.raises(ValueError, match="protocol"):
        AttributionEvaluator(K, "gradcam", protocol="voc")
    with pytest.raises(ValueError, match="methods"):
        AttributionEvaluator(K, ["gradcam", "gradcam"])
    with pytest.raises(ValueError, match="num_classes"):
        AttributionEvaluator(0)


@pytest.mark.parametrize("kind", ["distillation", "teacher"])
def test_trainer_test_logs_what_evaluate_reports(kind):
    student, teacher = _nets()
    dm = _data()
    if kind == "distillation":
        module = DistillationModule(teacher, student, test_localization=["gradcam"], test_protocol="all")
        expected = evaluate(module.student, dm, methods="gradcam", protocol="all", teacher=module.teacher,
                            progress=False, bootstrap=0)
        fields = ("point_acc", "auc", "energy", "num_pairs", "cos", "l2")
    else:
        module = TeacherModule(student, test_localization=True, test_protocol="all")
        expected = evaluate(module.model, dm, methods="gradcam", protocol="all", progress=False, bootstrap=0)
        fields = ("point_acc", "auc", "energy", "num_pairs")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    for _ in range(2):  # a second test run starts from reset metrics
        trainer.test(module, datamodule=dm, verbose=False)
        logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
        entry = expected["methods"]["gradcam"]
        assert entry["num_pairs"] > 0
        for field in fields:
            assert logged[f"test/gradcam/{field}"] == pytest.approx(entry[field], abs=1e-6), field
        assert "test/gradcam/cos" in logged if kind == "distillation" else "test/gradcam/cos" not in logged


def test_trainer_test_default_logs_no_localisation():
    student, teacher = _nets()
    module = DistillationModule(teacher, student)
    assert module.test_evaluator is None
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.test(module, datamodule=_data(), verbose=False)
    assert "test/map" in trainer.callback_metrics
    assert not [key for key in trainer.callback_metrics if key.startswith("test/gradcam/")]
    with pytest.raises(ValueError, match="test_localization"):
        DistillationModule(teacher, student, test_localization=3)
    with pytest.raises(ValueError, match="protocol"):
        TeacherModule(student, test_protocol="voc")


def test_report_round_trip_and_one_set_of_names(tmp_path):
    student, teacher = _nets()
    result = evaluate(student, _data(), methods="gradcam", teacher=teacher, progress=False, bootstrap=20,
                      faithfulness=True, faithfulness_steps=2)
    assert any(isinstance(v, float) and math.isnan(v) for v in result["methods"]["gradcam"].values())  # nan -> null
    report.save_results(result, tmp_path)
    assert _same(report.load_results(tmp_path), result)
    old = importlib.import_module("attrpreserve.evaluate")  # the package attribute is the function
    for name in ("format_table", "save_results", "load_results", "log_results", "summary_values", "log_summary",
                 "package_versions"):
        assert getattr(old, name) is getattr(report, name), name
    assert old.PROTOCOLS is importlib.import_module("attrpreserve.evaluation").PROTOCOLS


def _ddp_worker(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    try:
        student, teacher = _nets()
        result = evaluate(student, _data(), methods="gradcam", protocol="torchray", teacher=teacher, progress=False,
                          bootstrap=50)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))  # nan as NaN
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods() or not torch.distributed.is_available(),
                    reason="needs fork and torch.distributed")
def test_two_processes_sum_the_evaluators_states(tmp_path):
    """Each rank scores every other batch; the synced evaluator (counters included) gives every
    rank the single-process result."""
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    student, teacher = _nets()
    expected = evaluate(student, _data(), methods="gradcam", protocol="torchray", teacher=teacher, progress=False,
                        bootstrap=50)
    assert expected["metrics"]["num_images"] == 6 and expected["methods"]["gradcam"]["num_pairs"] > 0
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key in ("metrics", "methods", "baselines", "per_class"):
            assert _close(got[key], expected[key]), (rank, key)


def _close(a, b) -> bool:
    """Equal up to 1e-6 (sums over processes may round differently), nan equal to nan, a tuple
    equal to a list."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6
    return a == b


def _same(a, b) -> bool:
    """Equal, with nan equal to nan and a tuple equal to a list (JSON has no tuples)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                            and not isinstance(a, bool) and a == b)

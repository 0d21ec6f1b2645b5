"""LocalizationMonitor logs what `evaluate` computes on the same images, every due epoch."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from attrpreserve.callbacks import LocalizationMonitor
from attrpreserve.data import SyntheticDataModule
from attrpreserve.evaluate import evaluate
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule, TeacherModule


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _fit(module, monitor, epochs=2):
    recorder = Recorder()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1,
                         limit_val_batches=1, num_sanity_val_steps=0, callbacks=[monitor, recorder])
    dm = SyntheticDataModule(num_classes=3, num_train=8, num_val=4, num_test=12, batch_size=4)
    trainer.fit(module, dm)
    return recorder.epochs, dm


def test_logged_scores_equal_evaluate_on_the_same_images():
    torch.manual_seed(0)
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8))
    epochs, dm = _fit(module, LocalizationMonitor(num_images=8, batch_size=4))
    last = epochs[-1]
    dm.setup("test")
    expected = evaluate(module.student, dm, protocol="all", teacher=module.teacher, max_images=8, progress=False)
    gradcam = expected["methods"]["gradcam"]
    for key in ("point_acc", "auc", "cos", "l2"):
        assert last[f"val/{key}"] == pytest.approx(gradcam[key], abs=1e-5), key
    teacher = evaluate(module.teacher, dm, protocol="all", max_images=8, progress=False)["methods"]["gradcam"]
    assert last["val/teacher_point_acc"] == pytest.approx(teacher["point_acc"], abs=1e-5)


def test_every_n_epochs_and_always_the_last():
    module = TeacherModule(vgg_small(num_classes=3, width_divisor=8))
    epochs, _ = _fit(module, LocalizationMonitor(num_images=4, every_n_epochs=2), epochs=3)
    assert ["val/point_acc" in e for e in epochs] == [False, True, True]  # epoch 2 (period) and 3 (last)
    assert "val/cos" not in epochs[-1]  # no teacher, no cos


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="num_images"):
        LocalizationMonitor(num_images=0)
    with pytest.raises(ValueError, match="protocol"):
        LocalizationMonitor(protocol="nope")

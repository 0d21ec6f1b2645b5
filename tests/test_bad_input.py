"""Every mistake a user can make fails early with a ValueError/FileNotFoundError (or a documented
subclass) whose message names the argument or file and what is allowed."""

import pytest
import pytorch_lightning as pl
import torch
from tests.conftest import write_voc_folder

from attrpreserve.attribution import attribute
from attrpreserve.callbacks import AttributionMatching, StructuredPruning, UnstructuredPruning
from attrpreserve.data import SyntheticDataModule, VOCDataModule
from attrpreserve.metrics import MaskAUROC, PointingGame
from attrpreserve.models import CheckpointError, vgg_small
from attrpreserve.modules import DistillationModule, TeacherModule, load_module


def _voc(tmp_path, **kw):
    root = write_voc_folder(tmp_path / "v", **kw)
    dm = VOCDataModule(root, image_size=32, batch_size=2, num_workers=0)
    dm.setup()
    return dm


def _first_item(dm, split="train"):
    dataset = {"train": dm.train_dataset, "loc": dm.localization_dataset}[split]
    return [dataset[i] for i in range(len(dataset))]


def _ckpt(tmp_path, **model_kw):
    module = TeacherModule(vgg_small(**model_kw))
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def _fit_with(callback, tmp_path):
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    dm = SyntheticDataModule(num_classes=3, num_train=4, num_val=2, num_test=2, batch_size=2)
    trainer.fit(module, dm)


CASES = {
    # data
    "missing data root": (lambda t: VOCDataModule(t / "nowhere", num_workers=0).setup(), FileNotFoundError, "nowhere"),
    "wrong data root": (lambda t: VOCDataModule(t, num_workers=0).setup(), FileNotFoundError, "JPEGImages"),
    "empty split file": (lambda t: _voc(t, empty_split="Main/train"), ValueError, "train.txt"),
    "image without annotation": (lambda t: _voc(t, missing_xml=0), FileNotFoundError, ".xml"),
    "corrupt JPEG": (lambda t: _first_item(_voc(t, corrupt_image=0)), ValueError, ".jpg"),
    "unknown class name": (lambda t: _first_item(_voc(t, unknown_class=0)), ValueError, "aeroplane"),
    "image size too small": (lambda t: SyntheticDataModule(image_size=8), ValueError, "image_size"),
    "batch size zero": (lambda t: SyntheticDataModule(batch_size=0), ValueError, "batch_size"),
    "cache views zero": (lambda t: SyntheticDataModule(cache_views=0), ValueError, "cache_views"),
    # checkpoints and models
    "teacher ckpt of another width": (lambda t: vgg_small(num_classes=3, width_divisor=8,
                                                          weights=str(_ckpt(t, num_classes=3))),
                                      CheckpointError, "width_divisor"),
    "teacher ckpt of another class count": (lambda t: vgg_small(num_classes=5, weights=str(_ckpt(t, num_classes=3))),
                                            CheckpointError, "num_classes"),
    "missing weights file": (lambda t: vgg_small(weights=str(t / "w.pth")), FileNotFoundError, "w.pth"),
    "truncated checkpoint": (lambda t: (t / "x.ckpt").write_bytes(b"PK\x03\x04 truncated") and load_module(t / "x.ckpt"),
                             CheckpointError, "x.ckpt"),
    "foreign checkpoint": (lambda t: torch.save({"state_dict": {"w": torch.ones(1)}}, t / "f.ckpt") or load_module(
        t / "f.ckpt"), CheckpointError, "model spec"),
    "unknown width divisor": (lambda t: vgg_small(width_divisor=3), ValueError, "width_divisor"),
    "student/teacher class mismatch": (lambda t: DistillationModule(vgg_small(num_classes=3), vgg_small(num_classes=4)),
                                       ValueError, "same number of classes"),
    # distillation and matching hyper-parameters
    "temperature zero": (lambda t: DistillationModule(vgg_small(), vgg_small(), temperature=0), ValueError, "temperature"),
    "alpha above one": (lambda t: DistillationModule(vgg_small(), vgg_small(), alpha=1.2), ValueError, "alpha"),
    "drop_prob one": (lambda t: AttributionMatching(drop_prob=1.0), ValueError, "drop_prob"),
    "negative weight": (lambda t: AttributionMatching(weight=-1), ValueError, "weight"),
    "unknown matching mode": (lambda t: AttributionMatching(mode="gradcam"), ValueError, "ewa"),
    "unknown attribution layer": (lambda t: _fit_with(AttributionMatching(layer="fc8"), t), ValueError, "pool5"),
    "unknown attribution method": (lambda t: attribute(vgg_small(), torch.zeros(1, 3, 64, 64), torch.tensor([0]),
                                                       "gradcam++"), ValueError, "gradcam"),
    # pruning
    "pruning amount above one": (lambda t: UnstructuredPruning(amount=1.5), ValueError, "amount"),
    "pruning amount zero": (lambda t: UnstructuredPruning(amount=0.0), ValueError, "amount"),
    "rates of wrong length": (lambda t: _fit_with(StructuredPruning(rates=[0.5, 0.5]), t), ValueError, "rates"),
    "rate removing a whole layer": (lambda t: StructuredPruning(rates=1.0), ValueError, "rate"),
    # metrics
    "maps and masks of different shapes": (lambda t: PointingGame().update(torch.rand(2, 8, 8),
                                                                        torch.ones(2, 4, 4, dtype=torch.bool)),
                                           ValueError, "shape"),
    "auroc maps and masks of different shapes": (lambda t: MaskAUROC().update(torch.rand(2, 8, 8),
                                                                              torch.ones(3, 8, 8, dtype=torch.bool)),
                                                 ValueError, "shape"),
    "negative pointing tolerance": (lambda t: PointingGame(tolerance=-1), ValueError, "tolerance"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_early_with_a_clear_message(case, tmp_path):
    make, error, fragment = CASES[case]
    with pytest.raises(error) as info:
        make(tmp_path)
    assert fragment.lower() in str(info.value).lower(), str(info.value)
    # never a bare KeyError/IndexError from deep inside
    assert not isinstance(info.value, (KeyError, IndexError))


def test_mask_of_a_different_size_is_rejected_naming_both_files(tmp_path):
    # A mask whose size differs from its image is a wrong pair (real VOC masks always match):
    # scoring it after a resize would give a wrong number silently.
    dm = _voc(tmp_path, mask_scale={5: 2})  # image 5 is the first of Segmentation/val
    with pytest.raises(ValueError, match=r"SegmentationClass.*\.png.*JPEGImages.*\.jpg|JPEGImages.*SegmentationClass"):
        dm.localization_dataset[0]


def test_evaluation_of_a_model_predicting_nothing_warns_and_returns_nan():
    from attrpreserve.evaluate import evaluate

    model = vgg_small(num_classes=3, width_divisor=8)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.fill_(-10.0)  # every logit negative: nothing predicted positive
    dm = SyntheticDataModule(num_classes=3, num_test=4, batch_size=4)
    dm.setup("test")
    with pytest.warns(UserWarning):
        result = evaluate(model, dm, methods=["gradcam"], progress=False)
    assert result["methods"]["gradcam"]["num_pairs"] == 0
    assert result["methods"]["gradcam"]["point_acc"] != result["methods"]["gradcam"]["point_acc"]  # nan


def test_non_finite_loss_names_the_term_and_step():
    from attrpreserve.modules import NonFiniteLossError

    class Exploding:
        name, weight, student_layers, teacher_layers, teacher_grad = "match", 1.0, (), (), False

        def __call__(self, batch, teacher, student):
            return torch.tensor(float("nan"))

    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8))
    module.add_loss_term(Exploding())
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    dm = SyntheticDataModule(num_classes=3, num_train=4, num_val=2, num_test=2, batch_size=2)
    with pytest.raises(NonFiniteLossError, match=r"\['match'\].*|step 0") as info:
        trainer.fit(module, dm)
    assert "match" in str(info.value) and "step 0" in str(info.value)


def test_non_finite_steps_can_be_skipped_and_counted():
    class Sometimes:
        name, weight, student_layers, teacher_layers, teacher_grad = "match", 1.0, (), (), False
        calls = 0

        def __call__(self, batch, teacher, student):
            Sometimes.calls += 1
            return torch.tensor(float("inf") if Sometimes.calls == 2 else 0.0)

    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8),
                                nonfinite="skip")
    module.add_loss_term(Sometimes())
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, SyntheticDataModule(num_classes=3, num_train=8, num_val=2, num_test=2, batch_size=2))
    assert module.skipped_steps == 1 and Sometimes.calls == 4
    assert trainer.logged_metrics["train/skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in module.student.parameters())

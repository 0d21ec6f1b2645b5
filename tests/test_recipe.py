"""A checkpoint says how it was trained, and a resume that trains otherwise is stopped (or logged)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers import CSVLogger

from attrpreserve.callbacks import AttributionMatching, UnstructuredPruning
from attrpreserve.data import SyntheticDataModule
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule
from attrpreserve.recipe import describe_checkpoint, recipe_changes


def _module(**kwargs):
    return DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8),
                              **kwargs)


def _fit(module, callbacks, tmp_path, epochs=1, ckpt_path=None, logger=False):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1,
                         limit_val_batches=0, callbacks=callbacks)
    trainer.fit(module, SyntheticDataModule(num_classes=3, num_train=8, num_val=4, num_test=4, batch_size=4),
                ckpt_path=ckpt_path)
    return trainer


@pytest.fixture()
def matched_ckpt(tmp_path):
    trainer = _fit(_module(), [AttributionMatching(mode="sswa", weight=10.0, drop_prob=0.3)], tmp_path,
                   logger=CSVLogger(tmp_path, name="csv"))
    path = tmp_path / "matched.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_and_hparams_yaml_record_the_callbacks(matched_ckpt, tmp_path):
    import torch

    recipe = torch.load(matched_ckpt, map_location="cpu", weights_only=False)["recipe"]
    assert recipe["callbacks"]["AttributionMatching"]["weight"] == 10.0
    assert recipe["networks"]["student"]["parameters"] < recipe["networks"]["teacher"]["parameters"]
    hparams = yaml.unsafe_load(next(tmp_path.glob("csv/*/hparams.yaml")).read_text())  # tuples in data args
    assert hparams["callbacks"]["AttributionMatching"]["mode"] == "sswa"
    text = describe_checkpoint(matched_ckpt)
    assert "AttributionMatching: mode=sswa, weight=10" in text and "student" in text


def test_resume_without_the_matching_callback_is_refused(matched_ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"AttributionMatching \(mode=sswa, weight=10.0.*\) is missing"):
        _fit(_module(), [], tmp_path, epochs=2, ckpt_path=matched_ckpt)


def test_resume_with_other_settings_lists_them_and_the_override_logs_them(matched_ckpt, tmp_path):
    changed = [AttributionMatching(mode="swa", weight=10.0, drop_prob=0.3), UnstructuredPruning(amount=0.2)]
    with pytest.raises(ValueError) as error:
        _fit(_module(), changed, tmp_path, epochs=2, ckpt_path=matched_ckpt)
    assert "AttributionMatching.mode: sswa -> swa" in str(error.value)
    assert "UnstructuredPruning was not in the run" in str(error.value)
    with pytest.warns(UserWarning, match="changed training recipe.*AttributionMatching.mode: sswa -> swa"):
        trainer = _fit(_module(on_recipe_change="warn"), changed[:1], tmp_path, epochs=2, ckpt_path=matched_ckpt)
    assert trainer.current_epoch == 2


def test_same_recipe_resumes_silently(matched_ckpt, tmp_path, recwarn):
    trainer = _fit(_module(), [AttributionMatching(mode="sswa", weight=10.0, drop_prob=0.3)], tmp_path, epochs=2,
                   ckpt_path=matched_ckpt)
    assert trainer.current_epoch == 2
    assert not [w for w in recwarn if "recipe" in str(w.message)]


def test_recipe_changes_ignore_callbacks_that_only_observe():
    saved = {"AttributionPanels": {"every_n_epochs": 5}, "ModelCheckpoint": {"every_n_train_steps": 50}}
    assert recipe_changes(saved, {}) == []


def test_bad_on_recipe_change_is_refused():
    with pytest.raises(ValueError, match="on_recipe_change"):
        _module(on_recipe_change="ignore")

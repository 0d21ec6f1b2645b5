"""TeacherModule learns the synthetic task on CPU: clearly better than chance in well under a minute."""

import pytorch_lightning as pl
import torch
from torchmetrics.classification import MultilabelAveragePrecision

from attrpreserve import SyntheticDataModule, TeacherModule
from attrpreserve.models import vgg_small


def _val_map(model, dm):
    metric = MultilabelAveragePrecision(num_labels=2)
    training = model.training
    model.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            metric.update(torch.sigmoid(model(batch["image"])), batch["labels"].long())
    model.train(training)  # Lightning keeps a module's mode at fit start: leave it as it was
    return metric.compute().item()


def test_teacher_reaches_clearly_better_than_chance_map():
    pl.seed_everything(0)
    # An easy setting of the embedded data (2 shapes, larger, no distractors, 32 px) keeps it short.
    dm = SyntheticDataModule(num_classes=2, image_size=32, object_size=(0.3, 0.45), max_distractors=0, max_objects=2,
                             num_train=256, num_val=100, num_test=4, batch_size=16)
    dm.setup("fit")
    module = TeacherModule(vgg_small(num_classes=2, width_divisor=2, head_pool=1), optimizer="adamw", lr=1e-3,
                           milestones=(100,))
    untrained = _val_map(module.model, dm)
    prevalence = torch.stack([dm.val_dataset[i]["labels"] for i in range(len(dm.val_dataset))]).mean().item()
    trainer = pl.Trainer(max_epochs=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    trained = _val_map(module.model, dm)
    assert trained > max(untrained, prevalence) + 0.1, (trained, untrained, prevalence)
    # the module logged the same per-class mAP
    assert abs(trainer.callback_metrics["val/map"].item() - trained) < 1e-4
    assert {"val/map_image", "val/f1", "val/loss", "train/loss"} <= set(trainer.callback_metrics)

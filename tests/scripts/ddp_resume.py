"""Run by tests in a subprocess: a 2-process gloo DDP distillation (SSWA matching, unstructured
pruning) that checkpoints every step, or resumes from one of those checkpoints.

Usage: python ddp_resume.py OUT_DIR [CKPT]
Writes (rank 0) OUT_DIR/final.ckpt.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from attrpreserve.callbacks import AttributionMatching, UnstructuredPruning
from attrpreserve.data import SyntheticDataModule
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule


def main() -> None:
    out, ckpt = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
    pl.seed_everything(0)
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8),
                                lr=0.01)
    data = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4), num_train=48, num_val=8,
                               num_test=8, batch_size=8, num_workers=0)  # 3 steps per epoch and rank
    callbacks = [AttributionMatching(mode="sswa", weight=10.0),
                 UnstructuredPruning(amount=0.3, every_n_epochs=1, rounds=2, verbose=False)]
    if ckpt is None:
        callbacks.append(ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=1, save_top_k=-1))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, deterministic=True,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         enable_checkpointing=ckpt is None, default_root_dir=str(out), limit_val_batches=0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    trainer.save_checkpoint(out / "final.ckpt")


if __name__ == "__main__":
    main()

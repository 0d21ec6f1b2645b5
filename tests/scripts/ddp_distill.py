"""Run by tests in a subprocess: a 2-process gloo DDP distillation with SSWA matching and
unstructured pruning, then a DDP evaluation of the result.

Usage: python ddp_distill.py OUT_DIR [--cache]   (--cache: the teacher's outputs from a teacher
cache that rank 0 builds in OUT_DIR/cache while rank 1 waits)
Writes (rank 0) OUT_DIR/checkpoints/*.ckpt (ModelCheckpoint) and OUT_DIR/result.json: the
world size, the synced validation metrics of the last epoch, the checkpoint path and the
evaluation table computed by both ranks together.
"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from attrpreserve.callbacks import AttributionMatching, UnstructuredPruning
from attrpreserve.data import SyntheticDataModule
from attrpreserve.evaluate import evaluate
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule


def data(**cache) -> SyntheticDataModule:
    # 16 validation/test images = 2 batches of 8 per rank: no padding duplicates under DDP
    return SyntheticDataModule(num_classes=3, image_size=64, num_train=32, num_val=16,
                               num_test=16, batch_size=8, num_workers=0, **cache)


def main() -> None:
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    teacher, student = vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8)
    module = DistillationModule(teacher, student, lr=0.01)
    callbacks = [
        AttributionMatching(mode="sswa", weight=10.0),
        UnstructuredPruning(amount=0.5, every_n_epochs=1, rounds=2),
        ModelCheckpoint(dirpath=out / "checkpoints", filename="final"),
    ]
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=str(out),
    )
    dm = data(cache_teacher=True, cache_views=2, cache_dir=str(out / "cache")) if "--cache" in sys.argv else data()
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # The process group is still up: both ranks evaluate half of the batches each.
    table = evaluate(module.student, dm, methods=["gradcam", "ewa"], teacher=module.teacher, progress=False)
    if trainer.is_global_zero:
        (out / "result.json").write_text(json.dumps({
            "metrics": metrics, "ckpt": callbacks[-1].best_model_path or callbacks[-1].last_model_path,
            "world_size": trainer.world_size, "evaluate": table,
        }))


if __name__ == "__main__":
    main()

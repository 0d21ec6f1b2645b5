"""Run by tests in a subprocess: a 2-process gloo DDP distillation with SSWA matching.

Usage: python ddp_distill.py OUT_DIR [--prune]
Writes OUT_DIR/result.json (rank 0): final logged metrics and the checkpoint path.
"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from attrpreserve.callbacks import AttributionMatching
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule


class Blobs(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = (torch.rand(n, 3, generator=g) > 0.5).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "labels": self.y[i], "index": i}


def main() -> None:
    out = Path(sys.argv[1])
    prune = "--prune" in sys.argv
    pl.seed_everything(0)
    teacher, student = vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8)
    module = DistillationModule(teacher, student, lr=0.01)
    callbacks = [AttributionMatching(mode="sswa", weight=10.0)]
    if prune:
        from attrpreserve.callbacks.pruning import UnstructuredPruning

        callbacks.append(UnstructuredPruning(amount=0.5, every_n_epochs=1, rounds=2))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        default_root_dir=str(out), enable_checkpointing=False,
    )
    trainer.fit(module, DataLoader(Blobs(32, 0), batch_size=8), DataLoader(Blobs(16, 1), batch_size=8))
    ckpt = out / "final.ckpt"
    trainer.save_checkpoint(ckpt)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (out / "result.json").write_text(json.dumps({"metrics": metrics, "ckpt": str(ckpt),
                                                     "world_size": trainer.world_size}))


if __name__ == "__main__":
    main()

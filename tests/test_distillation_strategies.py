"""Distillation with matching under DDP (2 gloo processes), AMP and gradient accumulation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from attrpreserve.callbacks import AttributionMatching
from attrpreserve.modules import DistillationModule
from attrpreserve.models import vgg_small

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from ddp_distill import Blobs  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "ddp_distill.py"


@pytest.mark.xdist_group("ddp")
def test_ddp_two_processes_with_sswa(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert "val/match" in result["metrics"] and "val/map" in result["metrics"]
    loaded = DistillationModule.load_from_checkpoint(result["ckpt"])
    assert sum(p.numel() for p in loaded.student.parameters()) > 0


def _fit(**trainer_kwargs):
    pl.seed_everything(0)
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8),
                                lr=0.01)
    before = [p.detach().clone() for p in module.student.parameters()]
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[AttributionMatching(mode="sswa", weight=10.0)], **trainer_kwargs)
    loader = torch.utils.data.DataLoader(Blobs(32, 0), batch_size=8)
    trainer.fit(module, loader)
    moved = any(not torch.equal(a, b) for a, b in zip(before, module.student.parameters()))
    return trainer, moved


def test_bf16_autocast_step_is_finite_and_trains():
    trainer, moved = _fit(precision="bf16-mixed")
    assert moved and torch.isfinite(trainer.callback_metrics["train/match"])


def test_gradient_accumulation_runs_matching_each_micro_batch():
    trainer, moved = _fit(accumulate_grad_batches=2)
    assert moved and trainer.global_step == 2 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4

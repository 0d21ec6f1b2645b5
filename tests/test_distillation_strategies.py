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
from attrpreserve.cli import evaluate_main
from attrpreserve.evaluate import evaluate, load_results
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from ddp_distill import data  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "ddp_distill.py"


class Blobs(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = (torch.rand(n, 3, generator=g) > 0.5).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "labels": self.y[i], "index": i}


def _assert_same_table(a, b):
    for key in ("map", "map_image", "f1", "num_images"):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-6), key
    assert a["methods"].keys() == b["methods"].keys()
    for name in a["methods"]:
        for key, value in a["methods"][name].items():
            assert value == pytest.approx(b["methods"][name][key], abs=1e-6, nan_ok=True), (name, key)


@pytest.mark.xdist_group("ddp")
@pytest.mark.parametrize("teacher", ["online", "cached"])
def test_ddp_sswa_pruning_run_matches_single_process_evaluation(tmp_path, capsys, teacher):
    """Two gloo ranks distil with SSWA matching and unstructured pruning (the teacher run online,
    or read from a cache rank 0 builds): one loadable checkpoint (pruned), synced validation
    metrics and a DDP evaluation that all equal the same checkpoint scored in this single
    process; then `attrpreserve evaluate` under torchrun prints that table."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    flags = ["--cache"] if teacher == "cached" else []
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), *flags], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    if teacher == "cached":  # one cache, built once
        assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["final.ckpt"]

    loaded = DistillationModule.load_from_checkpoint(result["ckpt"])
    masks = [m.weight_mask for m in loaded.student.modules() if isinstance(m, torch.nn.Conv2d)]
    sparsity = sum(int((w == 0).sum()) for w in masks) / sum(w.numel() for w in masks)
    assert sparsity == pytest.approx(0.75, abs=0.01)  # two rounds of 50% of the remaining weights

    # the synced validation metrics of the DDP run = one process validating the checkpoint
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    single = trainer.validate(loaded, datamodule=data(), verbose=False)[0]
    for key in ("val/map", "val/f1", "val/map_image"):
        assert result["metrics"][key] == pytest.approx(single[key], abs=1e-6), key

    # evaluate() split over the two ranks = evaluate() here
    here = evaluate(loaded.student, data(), methods=["gradcam", "ewa"], teacher=loaded.teacher, progress=False)
    assert here["metrics"]["num_images"] == 16
    _assert_same_table(result["evaluate"], here)

    if teacher == "cached":
        return
    # the command under torchrun (2 gloo processes) = the command in one process
    args = ["--ckpt", result["ckpt"], "--data", "synthetic", "--num-classes", "3", "--image-size", "64",
            "--batch-size", "4", "--max-batches", "5", "--methods", "gradcam", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "attrpreserve", "evaluate", *args, "--out", str(tmp_path / "ddp_eval")]
    proc = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("gradcam") == 1  # rank 0 alone prints
    one = evaluate_main([*args, "--out", str(tmp_path / "one_eval")])
    capsys.readouterr()
    _assert_same_table(load_results(tmp_path / "ddp_eval"), one)  # nan comes back from JSON's null


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


@pytest.mark.xdist_group("ddp")
def test_ddp_resume_mid_epoch_equals_uninterrupted_run(tmp_path):
    """2 gloo ranks, SSWA matching and unstructured pruning: resuming from a mid-epoch checkpoint
    (each rank skips its own shard's trained batches and gets its own RNG state back) ends with
    the uninterrupted run's weights, masks and optimiser state, bit for bit."""
    script = Path(__file__).parent / "scripts" / "ddp_resume.py"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([sys.executable, str(script), str(tmp_path / "ref")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    mid = tmp_path / "ref" / "step=4.ckpt"  # epoch 1 (3 steps an epoch), after its first step
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "resumed"), str(mid)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "ref" / "final.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "final.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 9
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for x, y in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert len(a["rng_states"]) == 2  # one per rank

"""Crash and resume: `attrpreserve fit` killed with SIGKILL mid-epoch, then resumed with
`--ckpt_path last`, ends with exactly the weights, optimiser, pruning and matching state of a run
that was never interrupted (deterministic=True, fixed seed); two identical runs give identical
metrics.

The run that is killed is a real subprocess of the command line (a SIGKILL must not take the test
process with it); the uninterrupted reference and the resumed run go through the same command
line class in this process, with the same config and seed, one torch thread each (the
subprocess gets OMP_NUM_THREADS=1), so the three agree bit for bit. Exactness holds because every
source of randomness is either restored from the checkpoint (global RNG: dropout; the matching
callback's channel-drop generator) or a pure function of (seed, epoch, item) (shuffle and
augmentation, attrpreserve.data.resumable), and the resumed loader skips the batches already
trained on.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from attrpreserve.models import vgg_small

SCRIPTS = Path(__file__).parent / "scripts"
STEPS_PER_EPOCH = 6  # 48 training images, batches of 8
PRUNING = {
    "unstructured": """    - class_path: attrpreserve.UnstructuredPruning
      init_args: {amount: 0.3, every_n_epochs: 1, rounds: 3, verbose: false}""",
    "structured": """    - class_path: attrpreserve.StructuredPruning
      init_args: {rates: 0.25, at_epoch: 1, verbose: false}""",
}
CONFIG = """seed_everything: 0
model:
  class_path: attrpreserve.DistillationModule
  init_args:
    teacher:
      class_path: attrpreserve.models.VGG
      init_args: {{arch: vgg_small, num_classes: 3, width_divisor: 4}}
    student:
      class_path: attrpreserve.models.VGG
      init_args: {{arch: vgg_small, num_classes: 3, width_divisor: 8}}
    lr: 0.01
    milestones: [2]
data:
  class_path: attrpreserve.SyntheticDataModule
  init_args: {{num_classes: 3, image_size: 32, object_size: [0.25, 0.4], num_train: 48, num_val: 8, num_test: 8,
              batch_size: 8, num_workers: 0}}
trainer:
  max_epochs: 3
  deterministic: true
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, save_last: true, every_n_train_steps: 1}}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, filename: "epoch{{epoch}}", save_last: true, every_n_epochs: 1}}
    - class_path: attrpreserve.AttributionMatching
      init_args: {{mode: sswa, weight: 10.0, drop_prob: 0.3}}
{pruning}
    - class_path: kill_at_step.KillAtStep
"""


def _fit_killed(config: Path, kill_at: int) -> subprocess.CompletedProcess:
    """``attrpreserve fit --config CONFIG`` in a subprocess that SIGKILLs itself before step ``kill_at``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline", "KILL_AT_STEP": str(kill_at)}
    command = [sys.executable, "-m", "attrpreserve", "fit", "--config", str(config)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=config.parent)


def _fit_here(config: Path, monkeypatch: pytest.MonkeyPatch, resume: bool = False):
    """``attrpreserve fit --config CONFIG [--ckpt_path last]`` in this process (KillAtStep inert);
    returns the trainer and the messages of the warnings raised during the fit."""
    from attrpreserve.cli import AttrPreserveCLI

    with monkeypatch.context() as patch:
        patch.delenv("KILL_AT_STEP", raising=False)  # set, it would kill the test process
        patch.syspath_prepend(str(SCRIPTS))  # the config names kill_at_step.KillAtStep
        patch.chdir(config.parent)
        args = ["fit", "--config", str(config)] + (["--ckpt_path", "last"] if resume else [])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli = AttrPreserveCLI(args)
    return cli.trainer, [str(w.message) for w in caught]


def _config(root: Path, pruning: str) -> Path:
    root.mkdir(parents=True)
    path = root / "config.yaml"
    path.write_text(CONFIG.format(root=root, pruning=PRUNING[pruning]))
    return path


def _assert_equal(a, b, where="checkpoint"):
    """Exact equality of nested checkpoint contents (tensors bitwise)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("pruning", sorted(PRUNING))
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, monkeypatch, pruning):
    kill_at = STEPS_PER_EPOCH + 2  # epoch 1, third batch: after a pruning round, mid-epoch
    ref, _ = _fit_here(_config(tmp_path / "reference", pruning), monkeypatch)
    assert ref.global_step == 3 * STEPS_PER_EPOCH and ref.ckpt_path is None

    config = _config(tmp_path / "crashed", pruning)
    killed = _fit_killed(config, kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: no chance to save anything more
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    at_kill = _load(last)
    assert at_kill["global_step"] == kill_at and at_kill["epoch"] == 1

    resumed, warned = _fit_here(config, monkeypatch, resume=True)
    assert Path(resumed.ckpt_path).resolve() == last.resolve()  # `last` found the killed run's checkpoint
    assert not [m for m in warned if "not resumable" in m], warned  # our loader is: no mid-epoch warning

    a = _load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    b = _load(tmp_path / "crashed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    _assert_equal(a["state_dict"], b["state_dict"], "state_dict")  # student (structure, masks) and teacher
    _assert_equal(a["optimizer_states"], b["optimizer_states"], "optimizer_states")
    _assert_equal(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
    callbacks = {k: v for k, v in a["callbacks"].items() if "ModelCheckpoint" not in k}
    assert any("AttributionMatching" in k for k in callbacks) and any("Pruning" in k for k in callbacks)
    _assert_equal(callbacks, {k: b["callbacks"][k] for k in callbacks}, "callbacks")
    _assert_equal(a["loops"]["fit_loop"]["epoch_progress"], b["loops"]["fit_loop"]["epoch_progress"], "epochs")
    if pruning == "structured":  # the resumed run went on with the pruned architecture
        full = vgg_small(num_classes=3, width_divisor=8).features[0].out_channels
        assert b["state_dict"]["student.features.0.weight"].shape[0] == round(full * 0.75)


def _fit_in_process(seed: int) -> tuple[dict, list[torch.Tensor]]:
    import pytorch_lightning as pl

    from attrpreserve.callbacks import AttributionMatching
    from attrpreserve.data import SyntheticDataModule
    from attrpreserve.modules import DistillationModule

    pl.seed_everything(seed)
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8),
                                lr=0.01)
    data = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4), num_train=24, num_val=8,
                               num_test=8, batch_size=8, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, deterministic=True, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[AttributionMatching(mode="sswa", weight=10.0)])
    trainer.fit(module, datamodule=data)
    return dict(trainer.callback_metrics), [p.detach().clone() for p in module.student.parameters()]


def test_same_seed_gives_identical_metrics_and_weights():
    metrics_a, weights_a = _fit_in_process(0)
    metrics_b, weights_b = _fit_in_process(0)
    assert {"train/loss", "train/match", "val/map", "val/match"} <= metrics_a.keys()
    _assert_equal(metrics_a, metrics_b, "metrics")
    _assert_equal(weights_a, weights_b, "weights")
    metrics_c, _ = _fit_in_process(1)  # and the seed matters: another one trains differently
    assert not torch.equal(metrics_a["train/loss"], metrics_c["train/loss"])


class _Recording:
    """Mixed into TeacherModule: remembers (epoch, batch index, item indices, image sum) per step."""

    def training_step(self, batch, batch_idx):
        self.seen = getattr(self, "seen", [])
        self.seen.append((self.current_epoch, batch_idx, batch["index"].tolist(), float(batch["image"].sum())))
        return super().training_step(batch, batch_idx)


def _teacher_fit(root: Path, workers: int, ckpt: Path | None = None):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from attrpreserve import SyntheticDataModule, TeacherModule

    pl.seed_everything(3)
    module = type("Recording", (_Recording, TeacherModule), {})(
        vgg_small(num_classes=3, width_divisor=8, head_pool=1), lr=0.01)
    data = SyntheticDataModule(num_classes=3, image_size=32, object_size=(0.25, 0.4), num_train=40, num_val=8,
                               num_test=8, batch_size=8, num_workers=workers)
    callbacks = [ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1),
                 ModelCheckpoint(dirpath=root, filename="{epoch}", every_n_epochs=1, save_top_k=-1)]
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, deterministic=True, logger=False, limit_val_batches=1,
                         callbacks=callbacks if ckpt is None else [], enable_checkpointing=ckpt is None,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return module


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_any_checkpoint_replays_the_same_batches(tmp_path, workers):
    """Mid-epoch, after an epoch's last batch and at the epoch-end (validation) checkpoint, with
    and without worker processes (which fetch batches ahead): the resumed run trains on exactly
    the remaining batches of the uninterrupted run (same items, same augmentation) and ends
    with the same weights."""
    ref = _teacher_fit(tmp_path / "ref", workers)
    assert len(ref.seen) == 15
    for name in ("step=3.ckpt", "step=5.ckpt", "epoch=0.ckpt", "step=12.ckpt"):
        resumed = _teacher_fit(tmp_path / name, workers, ckpt=tmp_path / "ref" / name)
        seen = getattr(resumed, "seen", [])
        assert seen == ref.seen[len(ref.seen) - len(seen):], name
        assert len(seen) == {"step=3.ckpt": 12, "step=5.ckpt": 10, "epoch=0.ckpt": 10, "step=12.ckpt": 3}[name]
        _assert_equal(dict(ref.model.state_dict()), dict(resumed.model.state_dict()), name)

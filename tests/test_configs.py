"""Every config fits two steps through `attrpreserve fit` (tiny data), its last.ckpt evaluates
through `attrpreserve evaluate`, and it reloads with its module's `load_from_checkpoint`."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from attrpreserve.cli import main
from attrpreserve.models import VGG
from attrpreserve.modules import DistillationModule, TeacherModule

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
TINY_VOC = """data:
  class_path: attrpreserve.VOCDataModule
  init_args:
    root: {root}
    image_size: 64
    batch_size: 2
    num_workers: 0
"""
TINY_DATA = """data:
  class_path: attrpreserve.SyntheticDataModule
  init_args:
    num_classes: {nc}
    num_train: 8
    num_val: 4
    num_test: 4
    batch_size: 4
    cache_teacher: {cache}
    cache_dir: {tmp}/cache
"""


def _random_weights(config: dict, role: str, path: Path) -> str:
    """A state dict of the architecture the config gives ``role``: stands in for a trained teacher."""
    args = dict(config["model"]["init_args"][role]["init_args"])
    args.pop("weights", None)
    torch.save(VGG(**args).state_dict(), path)
    return str(path)


def _test_copy(path: Path, tmp_path: Path, voc_root: Path) -> Path:
    """The config with tiny data (synthetic, or for the VOC configs a 6-image VOC folder at 64 px),
    ImageNet weights dropped, teacher/student weights files of the right architecture (random),
    run folders in tmp_path, and a CSV logger (wandb's start costs seconds; it has its own test)."""
    text = path.read_text()
    config = yaml.safe_load(text)
    nc = int(re.search(r"num_classes: (\d+)", text).group(1))
    cache = "true" if "cache_teacher: true" in text else "false"
    text = re.sub(r"\n *weights: weights/.*", "", text)
    for role in ("teacher", "student"):
        if f"{role}_weights:" in text:
            file = _random_weights(config, role, tmp_path / f"{role}.pt")
            text = re.sub(rf"{role}_weights: .*", f"{role}_weights: {file}", text)
    data = TINY_VOC.format(root=voc_root) if "VOCDataModule" in text else TINY_DATA.format(nc=nc, cache=cache,
                                                                                           tmp=tmp_path)
    text = re.sub(r"data:\n(  .*\n)+", data, text)
    text = text.replace("runs/", f"{tmp_path}/runs/")
    text = text.replace("attrpreserve.loggers.WandbLogger", "pytorch_lightning.loggers.CSVLogger")
    text = text.replace("num_images: 256", "num_images: 4").replace("num_images: 64", "num_images: 4")
    out = tmp_path / path.name
    out.write_text(text)
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_fits_evaluates_and_reloads(path, tmp_path, monkeypatch, voc_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = _test_copy(path, tmp_path, voc_root)
    assert main(["fit", "--config", str(config), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                 "--trainer.limit_val_batches", "1"]) == 0
    folder = tmp_path / "runs" / path.parent.name / path.stem / "checkpoints"
    assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]  # one last.ckpt per run
    ckpt = folder / "last.ckpt"

    data = ["--data", str(voc_root), "--image-size", "64"] if "voc" == path.parent.name else ["--data", "synthetic"]
    out = tmp_path / "eval"
    assert main(["evaluate", "--ckpt", str(ckpt), *data, "--max-images", "4", "--batch-size", "2", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["metrics"]["num_images"] == 4
    assert result["provenance"]["checkpoint"]["path"] == str(ckpt.resolve())

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    cls = DistillationModule if "teacher" in saved["hyper_parameters"] else TeacherModule
    module = cls.load_from_checkpoint(ckpt)
    network = module.student if cls is DistillationModule else module.model
    state = {k: v for k, v in saved["state_dict"].items() if k.startswith("student." if cls is DistillationModule
                                                                           else "model.")}
    reloaded = {f"{'student.' if cls is DistillationModule else 'model.'}{k}": v
                for k, v in network.state_dict().items()}
    assert set(state) == set(reloaded)  # pruned structure (masks, removed channels) restored
    assert all(torch.equal(state[k], reloaded[k]) for k in state)
    assert {"callbacks", "networks", "trainer"} <= set(saved["recipe"])


def test_every_paper_experiment_has_a_config():
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS}
    for group in ("voc", "synthetic"):
        assert f"{group}/teacher" in names
        for div in (2, 4, 8):
            for method in ("kd", "ewa", "swa", "sswa"):
                assert f"{group}/distill_div{div}_{method}" in names
        for method in ("naive", "sswa"):
            assert f"{group}/structured_l1_{method}" in names
    assert {"voc/unstructured_16rounds_naive", "voc/unstructured_16rounds_sswa"} <= names


def test_every_distillation_config_names_its_teacher_weights_with_a_comment():
    for path in CONFIGS:
        text = path.read_text()
        if "DistillationModule" not in text:
            continue
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.strip().startswith("teacher_weights:"))
        assert lines[index - 1].strip().startswith("#"), path
        assert "teacher/checkpoints/last.ckpt" in lines[index], path


def test_voc_teacher_from_scratch_with_weights_null_on_the_command_line(tmp_path, monkeypatch, voc_root):
    """`--model.init_args.model.init_args.weights null` switches the ImageNet file off (jsonargparse
    hands the nested null over as the string 'None', which must not be read as a file name)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = Path(__file__).parents[1] / "configs" / "voc" / "teacher.yaml"
    assert main(["fit", "--config", str(config), "--model.init_args.model.init_args.weights", "null",
                 "--data.init_args.root", str(voc_root), "--data.init_args.image_size", "64",
                 "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
                 "--trainer.logger", "pytorch_lightning.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path),
                 "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches",
                 "1"]) == 0
    assert (tmp_path / "runs" / "voc" / "teacher" / "checkpoints" / "last.ckpt").is_file()
    assert main(["fit", "--config", str(config), "--data.init_args.root", str(voc_root), "--trainer.max_epochs",
                 "1"]) != 0  # the config's own file is missing here: a clear error, not a silent scratch start

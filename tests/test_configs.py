"""Every config parses and runs one fast_dev_run step (VOC ones on synthetic data)."""

import re
from pathlib import Path

import pytest

from attrpreserve.cli import AttrPreserveCLI

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


def _test_copy(path: Path, tmp_path: Path, voc_root: Path) -> Path:
    """The config with local weight files dropped (no trained teacher in tests: random weights)
    and tiny data: synthetic, or for the VOC configs a 6-image VOC folder at 64 px."""
    text = path.read_text()
    nc = int(re.search(r"num_classes: (\d+)", text).group(1))
    cache = "true" if "cache_teacher: true" in text else "false"
    text = re.sub(r"\n *weights: .*", "", text)
    data = TINY_VOC.format(root=voc_root) if "VOCDataModule" in text else TINY_DATA.format(nc=nc, cache=cache,
                                                                                           tmp=tmp_path)
    text = re.sub(r"data:\n(  .*\n)+", data, text)
    text = text.replace("runs/", f"{tmp_path}/runs/")
    # A CSV logger: wandb's service start costs seconds per test (wandb is tested in test_cli.py)
    text = text.replace("attrpreserve.loggers.WandbLogger", "pytorch_lightning.loggers.CSVLogger")
    out = tmp_path / path.name
    out.write_text(text)
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_runs_one_fast_dev_run_step(path, tmp_path, monkeypatch, voc_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = _test_copy(path, tmp_path, voc_root)
    cli = AttrPreserveCLI(["fit", "--config", str(config), "--trainer.fast_dev_run", "1"])
    assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1
    assert type(cli.model).__name__ in ("TeacherModule", "DistillationModule")


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

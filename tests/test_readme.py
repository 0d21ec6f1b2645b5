"""README.md is executed: every `attrpreserve` command of its bash blocks runs in order (at tiny
sizes, in a scratch folder with a 6-image VOC folder and stand-in ImageNet weights) and must exit
0, then its Python block runs with tiny sizes. A README command that breaks fails here."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from attrpreserve.cli import main

REPO = Path(__file__).parents[1]
README = (REPO / "README.md").read_text()

TINY_FIT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
TINY_SYNTHETIC = ["--data.init_args.num_train", "16", "--data.init_args.num_val", "8", "--data.init_args.num_test",
                  "8", "--data.init_args.batch_size", "8"]
TINY_VOC = ["--data.init_args.image_size", "64", "--data.init_args.batch_size", "2", "--data.init_args.num_workers",
            "0"]
TINY_EVALUATE = ["--max-images", "8", "--batch-size", "4", "--device", "cpu", "--no-progress"]
# Python block: (pattern, replacement), each must match exactly once.
TINY_PYTHON = [
    (r"SyntheticDataModule\(num_train=1000,", "SyntheticDataModule(num_train=16, num_val=8, num_test=8, batch_size=8,"),
    (r"pl\.Trainer\(max_epochs=100,", "pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, "
                                     "logger=False, enable_checkpointing=False, enable_progress_bar=False,"),
    (r"teacher=teacher\)", "teacher=teacher, max_images=8, progress=False)"),
]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[list[str]]:
    """Every command line of the bash blocks, continuations joined, comments dropped."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                found.append(shlex.split(line))
    return found


def tiny(command: list[str]) -> list[str]:
    name, args = command[1], command[2:]
    voc = any("voc" in a.lower() for a in args)
    if name == "fit":
        return [name, *args, *TINY_FIT, *(TINY_VOC if voc else TINY_SYNTHETIC)]
    if name in ("test", "validate"):
        return [name, *args, "--trainer.limit_test_batches", "2", "--trainer.limit_val_batches", "1",
                *(TINY_VOC if voc else TINY_SYNTHETIC)]
    if name == "evaluate":
        return [name, *args, *TINY_EVALUATE, *(["--image-size", "64"] if voc else [])]
    return [name, *args]


def test_readme_commands_are_known():
    found = commands()
    assert {c[0] for c in found} <= {"make", "attrpreserve"}
    makefile = (REPO / "Makefile").read_text()
    for command in found:
        if command[0] == "make":
            assert re.search(rf"^{command[1]}:", makefile, flags=re.M), command  # the target exists
    assert sum(c[0] == "attrpreserve" for c in found) >= 8


@pytest.mark.slow
def test_readme_commands_and_python_block_run(tmp_path, monkeypatch, voc_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shutil.copytree(voc_root, tmp_path / "data/VOCdevkit/VOC2012")
    (tmp_path / "weights").mkdir()
    features = {k: v.half() for k, v in torchvision.models.vgg16_bn().state_dict().items() if k.startswith("features")}
    torch.save(features, tmp_path / "weights/vgg16_bn-6c64b313.pth")  # stands in for the ImageNet file

    for command in commands():
        if command[0] == "make":
            continue  # `make quickstart` / `make test`: the quickstart runs in test_user_path.py, the tests here
        assert main(tiny(command)) == 0, command

    (code,) = blocks("python")
    for pattern, replacement in TINY_PYTHON:
        code, count = re.subn(pattern, replacement, code)
        assert count == 1, f"README's Python block no longer has {pattern!r}: update TINY_PYTHON"
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert 0 <= namespace["module"].student(torch.zeros(1, 3, 64, 64)).sigmoid().min() <= 1

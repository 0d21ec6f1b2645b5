"""Is a student's map limited by what it can draw or by what it generalises? Cosine between the
student's and the teacher's Grad-CAM maps (conv5_3, the teacher's top-1 class) on 256 un-augmented
training images against 256 localisation images, for sweep runs of ``synthetic_ablation.sh``.

Usage: python examples/synthetic_ablation/train_test_cos.py runs/sweeps/arms/distill_div8_sswa [RUN ...]
(each RUN a folder holding ``seed=<s>/final.ckpt``; seeds 0, 1 and 2 where present).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from attrpreserve import DistillationModule, SyntheticDataModule
from attrpreserve.attribution.methods import attribute


def map_cosines(ckpt: Path, seed: int, count: int = 256) -> dict[str, float]:
    module = DistillationModule.load_from_checkpoint(ckpt, map_location="cpu")
    data = SyntheticDataModule(num_classes=4, num_train=1000, num_val=300, num_test=300, seed=seed,
                               train_augment=False)
    data.setup()
    out = {}
    for split, dataset in (("train", data.train_dataset), ("test", data.localization_dataset)):
        images = torch.stack([dataset[i]["image"] for i in range(count)])
        with torch.no_grad():
            classes = module.teacher.eval()(images).argmax(dim=1)
        teacher = attribute(module.teacher, images, classes, "gradcam").flatten(1)
        student = attribute(module.student, images, classes, "gradcam").flatten(1)
        out[split] = torch.nn.functional.cosine_similarity(teacher, student, dim=1, eps=1e-8).mean().item()
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for run in map(Path, sys.argv[1:]):
        for seed in (0, 1, 2):
            ckpt = run / f"seed={seed}" / "final.ckpt"
            if ckpt.exists():
                values = map_cosines(ckpt, seed)
                print(f"{run} seed {seed}: train {values['train']:.3f}  test {values['test']:.3f}")

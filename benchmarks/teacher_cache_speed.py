"""Distillation epoch time with SSWA matching: teacher read from the cache vs run online.

Same data, teacher, student, batch and steps; the cached epoch samples one of K stored views per
image. Prints the cache build time and the ratio online / cached (target >= 4x on CPU for a
vgg_small teacher -> /8 student). Usage:
  python benchmarks/teacher_cache_speed.py                        # CPU, vgg_small 64 px
  python benchmarks/teacher_cache_speed.py --arch vgg16 --image-size 227 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_memory, sync  # noqa: E402

from attrpreserve.callbacks.matching import MatchingTerm  # noqa: E402
from attrpreserve.data import SyntheticDataModule  # noqa: E402
from attrpreserve.models import create_model  # noqa: E402
from attrpreserve.modules import DistillationModule  # noqa: E402
from attrpreserve.teacher_cache import TeacherCache  # noqa: E402


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            out[key] = to_device(value, device)
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg_small", choices=["vgg_small", "vgg16"])
    parser.add_argument("--student-divisor", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    dm = SyntheticDataModule(num_classes=4, image_size=args.image_size, num_train=args.num_images, num_val=2,
                             num_test=2, batch_size=args.batch_size, num_workers=args.workers)
    dm.setup("fit")
    teacher = create_model(args.arch, num_classes=4, width_divisor=1)
    student = create_model(args.arch, num_classes=4, width_divisor=args.student_divisor)
    module = DistillationModule(teacher, student).to(device).train()
    module.add_loss_term(MatchingTerm("sswa", 100.0, 0.3, "pool5", "pool5", "teacher_top1", False,
                                      torch.Generator().manual_seed(0)))
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=1e-3, momentum=0.9)

    def epoch(loader: DataLoader) -> None:
        for batch in loader:
            batch = to_device(batch, device)
            t, s = module._forward_both(batch)
            loss = module.compute_losses(batch, t, s)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        start = time.perf_counter()
        cache = TeacherCache(teacher, dm.source_dataset("train"), dm.sample_view, dm.apply_view, layers=["pool5"],
                             views=args.views, cache_dir=tmp, image_size=args.image_size,
                             batch_size=max(args.batch_size, args.views), device=device).build(progress=False)
        sync(device)
        build = time.perf_counter() - start
        size = sum(f.stat().st_size for f in cache.path.iterdir())
        loaders = {
            "online": dm.train_dataloader(),
            "cached": DataLoader(cache.dataset_for_training(), batch_size=args.batch_size, shuffle=True,
                                 num_workers=args.workers),
        }
        epoch(loaders["cached"])  # warm-up both paths
        epoch(loaders["online"])
        times = {}
        for name in ("online", "cached", "online", "cached"):
            sync(device)
            start = time.perf_counter()
            epoch(loaders[name])
            sync(device)
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - start)
        mems = {name: peak_memory(lambda ld=loaders[name]: epoch(ld), device) for name in loaders}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {where}; {args.arch} -> /{args.student_divisor}, {args.image_size} px, batch {args.batch_size}, "
          f"{args.num_images} images, K={args.views}")
    print(f"  cache build: {build:.2f} s ({args.num_images * args.views / build:.0f} views/s), "
          f"{size / args.num_images / 1024:.0f} KiB per image on disk")
    for name, seconds in times.items():
        mem = f", peak {mems[name]:.2f} GiB" if mems[name] is not None else ""
        print(f"  {name:7s} epoch {seconds:7.2f} s  {args.num_images / seconds:8.1f} images/s{mem}")
    print(f"ratio online/cached = {times['online'] / times['cached']:.2f}  (target >= 4 on CPU)")
    return {**times, "build": build}


if __name__ == "__main__":
    main()

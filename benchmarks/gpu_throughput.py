"""Mixed-precision throughput of the distillation step and of Grad-CAM evaluation, side by side.

VGG16 teacher -> VGG16/8 student at 227 px, batch 64 (the paper's setting) by default. Every row
runs in this process on the same networks and a fixed batch already on the device (the data
loader is measured by ``store_speed.py``):

- ``online``: one SSWA distillation step (teacher forward, its head gradient, the student's
  forward and double backward, KD + matching loss, SGD step), per precision: ``fp32``,
  ``bf16`` (autocast) and ``fp16`` (autocast + ``torch.amp.GradScaler``, as Lightning's
  ``16-mixed``); with ``--channels-last`` the networks and inputs in channels_last as well.
- ``kd``: the plain distillation step on the same networks (teacher forward without gradient,
  KD + task loss, the student's forward and backward): the matching overhead is ``online / kd``
  at the same precision.
- ``cached``: the same step reading the teacher from cache tensors (logits, pool5), the teacher
  head alone recomputed for its gradient (``forward_teacher_cached``).
- ``gradcam``: ``attribute(..., "gradcam")`` of the student at conv5_3 for the top class.

Columns: ms per step (median of interleaved repeats), images/s, peak device memory, ratio to
fp32. Then a ``torch.profiler`` table of the bf16 online SSWA step (top ops by device time).

    python benchmarks/gpu_throughput.py                      # CUDA, VGG16 -> /8, 227 px, batch 64
    python benchmarks/gpu_throughput.py --channels-last
    python benchmarks/gpu_throughput.py --device cpu --arch vgg_small --image-size 64 --batch-size 8 \\
        --repeats 2 --precisions fp32 bf16                   # a smoke run of the script on CPU
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_memory, time_interleaved  # noqa: E402

from attrpreserve.attribution import attribute  # noqa: E402
from attrpreserve.callbacks.matching import MatchingTerm  # noqa: E402
from attrpreserve.models import create_model  # noqa: E402
from attrpreserve.modules import DistillationModule  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16", choices=["vgg16", "vgg_small"])
    parser.add_argument("--student-divisor", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    teacher = create_model(args.arch, num_classes=args.num_classes, width_divisor=1)
    student = create_model(args.arch, num_classes=args.num_classes, width_divisor=args.student_divisor)
    module = DistillationModule(teacher, student, channels_last=args.channels_last).to(device).train()
    term = MatchingTerm("sswa", 100.0, 0.3, "pool5", "pool5", "teacher_top1", False, torch.Generator().manual_seed(0))
    module.add_loss_term(term)
    kd_module = DistillationModule(teacher, student, channels_last=args.channels_last).to(device).train()
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=1e-4, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = (torch.rand(args.batch_size, args.num_classes, device=device) < 0.15).float()
    online = {"image": images, "labels": labels}
    with torch.no_grad():
        result = module.forward_teacher(images, ["pool5"])
    cached = {**online, "teacher_logits": result.logits.float(),
              "teacher_features": {"pool5": result.features["pool5"].float()}}

    def step(batch: dict, dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None,
             on: DistillationModule = module) -> None:
        context = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with context:
            t, s = on._forward_both(batch)
            loss = on.compute_losses(batch, t, s)["loss"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def gradcam(dtype: torch.dtype | None) -> None:
        context = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with context:
            attribute(module.student, images, torch.zeros(args.batch_size, dtype=torch.long, device=device),
                      "gradcam", layer="conv5_3" if args.arch == "vgg16" else None)

    fns = {}
    for name in args.precisions:
        dtype = DTYPES[name]
        scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        fns[f"online/{name}"] = lambda d=dtype, s=scaler: step(online, d, s)
        fns[f"kd/{name}"] = lambda d=dtype, s=scaler: step(online, d, s, kd_module)
        fns[f"cached/{name}"] = lambda d=dtype, s=scaler: step(cached, d, s)
        fns[f"gradcam/{name}"] = lambda d=dtype: gradcam(d)
    seconds = time_interleaved(fns, args.repeats, device)
    memory = {name: peak_memory(fn, device) for name, fn in fns.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    print(f"device: {where}; torch {torch.__version__}; {args.arch} -> /{args.student_divisor}, "
          f"{args.image_size} px, batch {args.batch_size}, channels_last={args.channels_last}")
    print(f"| row | ms/step | images/s | peak GiB | vs fp32 |\n|---|---|---|---|---|")
    results: dict[str, dict[str, float]] = {}
    for name, sec in seconds.items():
        kind = name.split("/")[0]
        base = seconds.get(f"{kind}/fp32")
        ratio = f"{base / sec:.2f}x" if base else "-"
        mem = f"{memory[name]:.2f}" if memory[name] is not None else "-"
        print(f"| {name} | {1e3 * sec:.1f} | {args.batch_size / sec:.0f} | {mem} | {ratio} |")
        results[name] = {"seconds": sec, "images_per_s": args.batch_size / sec, "peak_gib": memory[name] or 0.0}
    for name in args.precisions:
        print(f"matching overhead ({name}): online / kd = {seconds[f'online/{name}'] / seconds[f'kd/{name}']:.3f}")
    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        dtype = DTYPES["bf16" if "bf16" in args.precisions else args.precisions[0]]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        step(online, dtype, None)
        with profile(activities=activities) as prof:
            for _ in range(3):
                step(online, dtype, None)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(f"\ntorch.profiler, 3 online SSWA steps ({'bf16' if dtype is torch.bfloat16 else 'fp32'}), top ops:")
        print(prof.key_averages().table(sort_by=sort, row_limit=15))
    return results


if __name__ == "__main__":
    main()

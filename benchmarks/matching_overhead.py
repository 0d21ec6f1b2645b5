"""Cost of one attribution-matching training step against a plain KD step.

Three step kinds on the same teacher, student and batch:
  kd         plain distillation (teacher under no_grad, KD + BCE, backward, SGD step)
  ours       KD + SSWA matching as AttributionMatching runs it (teacher gradient from its head
             only, student gradient w.r.t. its features with create_graph)
  per_label  KD + SSWA matching of every (image, ground-truth class) pair (``target="per_label"``;
             labels drawn with ``--classes-per-image`` classes per image on average, VOC's 1.5)
  reference  KD + SSWA matching the way the authors' scripts compute the feature gradients:
             teacher forward recorded, ``score.backward(create_graph=True)`` over every
             parameter of teacher and student, gradients read from retained features

Target (issue 3): ours / kd <= 1.10. Usage:
  python benchmarks/matching_overhead.py                                # CPU, vgg_small 64 px
  python benchmarks/matching_overhead.py --arch vgg16 --image-size 227 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_memory, time_interleaved  # noqa: E402

from attrpreserve.attribution import capture_features, sswa_map, swa_map  # noqa: E402
from attrpreserve.callbacks.matching import MatchingTerm  # noqa: E402
from attrpreserve.losses import matching_loss  # noqa: E402
from attrpreserve.models import create_model  # noqa: E402
from attrpreserve.modules import DistillationModule  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg_small", choices=["vgg_small", "vgg16"])
    parser.add_argument("--teacher-divisor", type=int, default=1)
    parser.add_argument("--student-divisor", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    parser.add_argument("--classes-per-image", type=float, default=1.5, help="mean ground-truth classes per image")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size, as the VOC configs' Trainer(benchmark=True)
    torch.manual_seed(0)
    teacher = create_model(args.arch, num_classes=args.num_classes, width_divisor=args.teacher_divisor)
    student = create_model(args.arch, num_classes=args.num_classes, width_divisor=args.student_divisor)
    module = DistillationModule(teacher, student, lr=0.01).to(device)
    module.train()
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = (torch.rand(args.batch_size, args.num_classes, device=device) < args.classes_per_image / args.num_classes)
    labels = labels.float()
    batch = {"image": images, "labels": labels}
    term = MatchingTerm("sswa", 100.0, 0.3, "pool5", "pool5", "teacher_top1", False, torch.Generator().manual_seed(0))
    per_label = MatchingTerm("sswa", 100.0, 0.3, "pool5", "pool5", "per_label", False, torch.Generator().manual_seed(0))

    def step_kd() -> None:
        teacher_out, student_out = module._forward_both(batch)
        loss = module.compute_losses(batch, teacher_out, student_out)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def step_with(matching: MatchingTerm) -> None:
        module.add_loss_term(matching)
        try:
            step_kd()
        finally:
            module.remove_loss_term(matching.name)

    def step_ours() -> None:
        step_with(term)

    def step_per_label() -> None:
        step_with(per_label)

    # The reference's way: everything recorded, full backward with create_graph for one gradient.
    ref_teacher = create_model(args.arch, num_classes=args.num_classes, width_divisor=args.teacher_divisor)
    ref_teacher.load_state_dict(teacher.state_dict())
    ref_teacher.to(device).eval()

    def step_reference() -> None:
        with capture_features(ref_teacher, ["pool5"]) as t_feats:
            t_logits = ref_teacher(images)
        t_feat = t_feats["pool5"]
        t_feat.retain_grad()
        classes = t_logits.argmax(1)
        t_logits.gather(1, classes[:, None]).sum().backward(create_graph=True)
        t_map = sswa_map(t_feat, t_feat.grad, 0.3, generator=term.generator).detach()
        ref_teacher.zero_grad(set_to_none=True)
        with capture_features(student, ["pool5"]) as s_feats:
            s_logits = student(images)
        s_feat = s_feats["pool5"]
        s_feat.retain_grad()
        s_logits.gather(1, classes[:, None]).sum().backward(create_graph=True)
        s_map = swa_map(s_feat, s_feat.grad)
        losses = module.compute_losses(batch, and_result(t_logits), and_result(s_logits))
        loss = losses["loss"] + 100.0 * matching_loss(s_map, t_map)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fns = {"kd": step_kd, "ours": step_ours, "per_label": step_per_label, "reference": step_reference}
    times = time_interleaved(fns, args.repeats, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {where}; {args.arch} /{args.teacher_divisor} -> /{args.student_divisor}, "
          f"{args.image_size} px, batch {args.batch_size}")
    for name, seconds in times.items():
        mem = peak_memory(fns[name], device)
        extra = f", peak {mem:.2f} GiB" if mem is not None else ""
        print(f"  {name:9s} {seconds * 1e3:8.1f} ms/step  {args.batch_size / seconds:8.1f} images/s{extra}")
    print(f"ratio ours/kd        = {times['ours'] / times['kd']:.3f}  (target <= 1.10)")
    print(f"ratio per_label/kd   = {times['per_label'] / times['kd']:.3f}  "
          f"({int(labels.sum())} pairs over {int(labels.any(0).sum())} classes in the batch)")
    print(f"ratio reference/ours = {times['reference'] / times['ours']:.2f}")
    return times


def and_result(logits: torch.Tensor):
    from attrpreserve.terms import ForwardResult

    return ForwardResult(logits=logits)


if __name__ == "__main__":
    main()

"""The ablation summary: one row per run of every step, from the harness's `table.json` files.

Usage: python examples/synthetic_ablation/summary.py OUT STEP [STEP ...] (called by `synthetic_ablation.sh report`).
"""
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = sys.argv[2:]
for protocol in ("all", "paper"):
    print(f"\n### Summary, protocol `{protocol}` (Grad-CAM at conv5_3; mean ± std over seeds, worst seed in brackets)\n")
    print("recovered = (point acc - KD) / (teacher - KD) per seed, and mAP - KD, against the step's references:")
    print("the teachers of `teachers` and the /8 KD students of `arms` (60 epochs), except: `epochs100_sswa`,")
    print("`target`, `target_beta` and `arms100` (the 100-epoch KD of `epochs100_kd`), `width_sswa` (the /4 KD of")
    print("`width_kd`), `head_sswa` and `head_target` (teachers of `head_teachers`, KD of `head_kd`), `head100_sswa`")
    print("(same teachers, KD of `head100_kd`), `crop_sswa_*` (KD of `crop_kd` with that crop), `epochs150_sswa`")
    print("(KD of `epochs150_kd`), `online_sswa` (KD of `online_kd`), `teacherlen*` (teachers of `teacher_len`,")
    print("KD of the `_kd` of the same length), `head150_sswa` (teachers of `head_teachers`, KD of `head150_kd`),")
    print("`wide_sswa` and `wide_arms` (teachers of `wide_teachers`, KD of `wide_kd`). Every ground-truth pair under")
    print("`all`.\n")
    print("| step | run | point acc | recovered (%) | cos | mAP | mAP - KD |")
    print("|---|---|---|---|---|---|---|")
    for step in steps:
        path = out / step / "table.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        kd = data.get("references", {}).get(protocol, {}).get("KD", {})
        for table in data["tables"]:
            if table["protocol"] != protocol:
                continue
            for row in table["rows"]:
                grid = ", ".join(f"{k}={v}" for k, v in row.get("grid", {}).items())
                name = row["config"] + (f" ({grid})" if grid else "")
                def cell(key, scale=1.0, digits=2, worst=min):
                    m = row.get(key)
                    if not m or m.get("mean") is None:
                        return "-"
                    values = [v for v in m["values"].values() if v is not None]
                    return (f"{m['mean'] * scale:.{digits}f} ± {m['std'] * scale:.{digits}f} "
                            f"[{worst(values) * scale:.{digits}f}]")
                gaps = [row["map"]["values"][s] - kd[s]["map"] for s in row["map"]["values"] if s in kd]
                gap = f"{sum(gaps) / len(gaps):+.2f}" if gaps and not row["config"].endswith("_kd") else "-"
                print(f"| {step} | {name} | {cell('point_acc')} | {cell('recovered', 100, 1)} | {cell('cos', 1, 3)} "
                      f"| {cell('map')} | {gap} |")

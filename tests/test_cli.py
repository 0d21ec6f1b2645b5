"""The `attrpreserve` command: help, evaluate, quickstart; and an offline wandb run folder."""

import json
import time

import pytest
import pytorch_lightning as pl
import torch

from attrpreserve.callbacks import AttributionMatching, AttributionPanels
from attrpreserve.cli import evaluate_main, main
from attrpreserve.data import SyntheticDataModule
from attrpreserve.evaluate import evaluate
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule


def _data(**kw):
    return SyntheticDataModule(num_classes=3, num_train=8, num_val=4, num_test=4, batch_size=4, **kw)


def _distilled_ckpt(tmp_path):
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, _data())
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    text = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "evaluate", "quickstart"):
        assert f"  {sub}" in text


def test_evaluate_command_writes_results_and_uses_embedded_teacher(tmp_path, capsys):
    path, module = _distilled_ckpt(tmp_path)
    out = tmp_path / "eval"
    result = evaluate_main(["--ckpt", str(path), "--data", "synthetic", "--num-classes", "3", "--batch-size", "4",
                            "--max-batches", "1", "--methods", "gradcam,ewa", "--out", str(out), "--device", "cpu"])
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["methods"]) == {"gradcam", "ewa"}
    assert (out / "results.csv").read_text().count("\n") >= 3
    # same numbers as evaluate() on the module's own networks
    direct = evaluate(module.student, _data_setup(), methods=["gradcam"], teacher=module.teacher, max_batches=1,
                      progress=False)
    for key in ("auc", "point_acc", "cos", "l2"):
        a, b = result["methods"]["gradcam"][key], direct["methods"]["gradcam"][key]
        assert (a != a and b != b) or a == pytest.approx(b, abs=1e-6), key
    assert "gradcam" in capsys.readouterr().out


def _data_setup():
    dm = SyntheticDataModule(num_classes=3, batch_size=4)
    dm.setup("test")
    return dm


def test_evaluate_command_bf16_precision(tmp_path, capsys):
    path, module = _distilled_ckpt(tmp_path)
    args = ["--ckpt", str(path), "--data", "synthetic", "--num-classes", "3", "--batch-size", "4", "--max-batches",
            "1", "--device", "cpu", "--bootstrap", "0", "--protocol", "all"]
    result = evaluate_main([*args, "--precision", "bf16-mixed", "--out", str(tmp_path / "bf16")])
    saved = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert saved["provenance"]["precision"] == "bf16-mixed"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the flag is an autocast around evaluate()
        direct = evaluate(module.student, _data_setup(), teacher=module.teacher, max_batches=1, progress=False,
                          protocol="all", bootstrap=0)
    for key in ("auc", "point_acc", "cos", "l2"):
        assert result["methods"]["gradcam"][key] == pytest.approx(direct["methods"]["gradcam"][key], abs=1e-6), key
    with pytest.raises(SystemExit):
        evaluate_main([*args, "--precision", "bf16"])
    assert "invalid choice: 'bf16'" in capsys.readouterr().err


def test_evaluate_command_rejects_unknown_method_before_loading(tmp_path):
    with pytest.raises(ValueError, match="gradcam"):
        evaluate_main(["--ckpt", str(tmp_path / "missing.ckpt"), "--data", "synthetic", "--methods", "gradcam,nope"])


def test_evaluate_command_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        evaluate_main(["--ckpt", str(tmp_path / "missing.ckpt"), "--data", "synthetic"])


def test_quickstart_tiny_run_writes_table_panels_and_checkpoints(tmp_path):
    assert main(["quickstart", "--out", str(tmp_path), "--num-train", "16", "--num-test", "8", "--teacher-epochs",
                 "1", "--student-epochs", "1", "--views", "1", "--panels", "2", "--curves", "--no-progress",
                 "--width-multiplier", "2"]) == 0
    rows = json.loads((tmp_path / "table.json").read_text())
    # --width-multiplier 2: conv5_3 has 256 channels in the teacher, 32 in the /8 student
    state = torch.load(tmp_path / "student_sswa.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    last = {k.split(".", 1)[0]: v.shape[0] for k, v in state.items() if k.endswith("features.11.weight")}
    assert last == {"teacher": 256, "student": 32}
    assert [r["model"] for r in rows] == ["teacher", "KD", "SSWA", "center (baseline)", "random order"]
    for name in ("table.csv", "table.json", "table.md", "panels.png", "teacher.ckpt", "student_kd.ckpt",
                 "student_sswa.ckpt"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "table.md").read_text().count("| teacher |") == 3  # paper, every pair, TorchRay's
    models = rows[:4]
    assert len({r["pairs (all)"] for r in models}) == 1  # every model (and the baseline) scored on the same pairs
    assert all(r["pairs"] <= r["pairs (all)"] for r in models[:3])  # the paper's are those predicted positive
    assert all(0 <= r["deletion (all)"] <= 1 and 0 <= r["insertion (all)"] <= 1 for r in models[:3] + rows[4:])
    assert "deletion: lower is more faithful" in (tmp_path / "table.md").read_text()


def test_offline_wandb_run_folder_holds_scalars_images_and_table(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    from attrpreserve.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), name="offline-test")
    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         callbacks=[AttributionMatching(mode="sswa", weight=1.0), AttributionPanels(num_images=2)])
    dm = _data()
    trainer.fit(module, dm)
    dm.setup("test")
    evaluate(module.student, dm, methods=["gradcam"], teacher=module.teacher, logger=logger, progress=False)
    logger.experiment.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # Offline, the config is in the run record, which wandb's service may still be writing after finish().
    path, deadline = next(runs[0].glob("*.wandb")), time.monotonic() + 120
    while b"train/match" not in path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    files = [p for p in runs[0].rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" and "panels" in str(p) for p in files)
    assert any(p.name.endswith(".table.json") for p in files)
    record = path.read_bytes()
    assert b"temperature" in record and b"alpha" in record and b"train/match" in record

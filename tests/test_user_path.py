"""The path a user walks, through the installed `attrpreserve` command: fit a teacher, distil it
with SSWA matching, evaluate the checkpoint into the run's offline wandb record, read what the
run and results.json hold; exit statuses and one-line errors; opt-in downloads (offline)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from attrpreserve.cli import main

REPO = Path(__file__).parents[1]
COMMAND = shutil.which("attrpreserve", path=str(Path(sys.executable).parent)) or "attrpreserve"
TINY = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--data.init_args.num_train", "16", "--data.init_args.num_val", "8", "--data.init_args.num_test", "16",
        "--data.init_args.batch_size", "8"]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **env}
    environment.pop("WANDB_SERVICE", None)  # each command its own wandb service, as in a user's shell
    return subprocess.run([COMMAND, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


def wandb_records(run_dir: Path, timeout: float = 120.0) -> dict:
    """Config, history rows and summary of an offline wandb run folder, read from its ``.wandb``
    file (a LevelDB-style log of protobuf records: 7-byte header, 32 KiB blocks, each record a
    4-byte checksum, 2-byte length and 1-byte type, split across blocks as first/middle/last).

    wandb's service writes the file in the background: ``run.finish()`` in this process can return
    before the last records land, so wait for the run's exit record."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        out = _read_records(next(run_dir.glob("*.wandb")).read_bytes())
        if out["exited"] or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_records(data: bytes) -> dict:
    from wandb.proto import wandb_internal_pb2

    pos, buffer, out = 7, b"", {"config": {}, "history": [], "summary": {}, "exited": False}
    block = 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buffer += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # first / middle part of a split record
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(buffer)
        buffer = b""
        which = record.WhichOneof("record_type")
        key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
        if which == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif which == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif which == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif which == "exit":
            out["exited"] = True
    return out


def test_fit_distil_evaluate_through_the_command(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    teacher = _run(["fit", "--config", "configs/synthetic/teacher.yaml", *TINY], tmp_path)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    student = _run(["fit", "--config", "configs/synthetic/distill_div8_sswa.yaml", *TINY], tmp_path)
    assert student.returncode == 0, student.stderr[-3000:]
    teacher_ckpt = (tmp_path / "runs/synthetic/teacher/checkpoints/last.ckpt").resolve()
    assert f"teacher weights: {teacher_ckpt}" in student.stdout + student.stderr  # the log names what it loaded

    run_folder = tmp_path / "runs/synthetic/distill_div8_sswa"
    ckpt = run_folder / "checkpoints/last.ckpt"
    assert sorted(p.name for p in ckpt.parent.glob("last*")) == ["last.ckpt"]
    evaluated = _run(["evaluate", "--ckpt", str(ckpt), "--data", "synthetic", "--protocol", "all",
                      "--max-images", "12", "--batch-size", "8", "--device", "cpu", "--wandb"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "evaluate: 2/2 batches" in evaluated.stderr  # not a terminal: plain progress lines

    runs = sorted((run_folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # evaluate resumed the run
    training, evaluation = (wandb_records(r) for r in runs)
    callbacks = training["config"]["callbacks"]
    matching = callbacks["AttributionMatching"]
    assert (matching["mode"], matching["weight"], matching["drop_prob"], matching["layer"]) == ("sswa", 100.0,
                                                                                                   0.3, "conv5_3")
    assert training["config"]["weights"]["teacher"]["path"] == str(teacher_ckpt)
    assert len(training["config"]["weights"]["teacher"]["sha256"]) == 16
    assert training["config"]["networks"]["student"]["spec"]["width_divisor"] == 8
    assert training["config"]["networks"]["student"]["parameters"] < training["config"]["networks"]["teacher"][
        "parameters"]
    assert "_instantiator" not in training["config"]
    epochs = [row for row in training["history"] if "val/point_acc" in row]
    assert len(epochs) == 2  # one per validation epoch
    assert all(0 <= row["val/point_acc"] <= 1 and -1 <= row["val/cos"] <= 1 for row in epochs)
    assert {row["val/teacher_point_acc"] for row in epochs} == {epochs[0]["val/teacher_point_acc"]}
    images = sorted((runs[0] / "files/media/images/panels").glob("*.png"))
    assert len(images) == 2  # the first epoch and the last
    assert 0 <= evaluation["summary"]["evaluate/all/gradcam/point_acc"] <= 1
    assert evaluation["config"]["evaluate"]["protocol"] == "all"

    result = json.loads((ckpt.parent / "last_eval/results.json").read_text())
    provenance = result["provenance"]
    assert provenance["checkpoint"]["path"] == str(ckpt.resolve())
    from attrpreserve.models.weights import file_digest

    assert provenance["checkpoint"]["sha256"] == file_digest(ckpt)
    assert provenance["methods"]["gradcam"]["layer"] == "conv5_3"
    assert provenance["methods"]["gradcam"]["layer_module"] == "features.13"
    assert provenance["model"]["spec"]["width_divisor"] == 8 and provenance["teacher"]["spec"]["width_divisor"] == 1
    assert provenance["data"]["root"] == "synthetic" and provenance["max_images"] == 12
    assert result["metrics"]["num_images"] == 12 and "torch" in provenance["versions"]

    info = _run(["info", "--ckpt", str(ckpt)], tmp_path)
    assert info.returncode == 0, info.stderr[-2000:]
    assert "AttributionMatching: mode=sswa, weight=100" in info.stdout
    assert f"teacher from {teacher_ckpt}" in info.stdout

    # `test`/`validate`/`fit --ckpt_path`: LightningCLI must not re-parse the checkpoint's
    # hyperparameters over the config (provenance keys are no arguments; flags must win).
    tested = _run(["test", "--config", "configs/synthetic/distill_div8_sswa.yaml", *TINY, "--ckpt_path", str(ckpt),
                   "--model.init_args.test_localization=true", "--trainer.logger=false"], tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test/gradcam/point_acc" in tested.stdout
    epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    resumed = _run(["fit", "--config", "configs/synthetic/distill_div8_sswa.yaml", *TINY, "--ckpt_path", str(ckpt),
                    "--trainer.max_epochs", "3"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == epoch + 1  # resumed: one more epoch


def test_console_script_exit_statuses_and_one_line_errors(tmp_path):
    assert _run(["--help"], tmp_path).returncode == 0
    missing = _run(["evaluate", "--ckpt", "nope.ckpt", "--data", "synthetic"], tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == "attrpreserve evaluate: error: Checkpoint not found: 'nope.ckpt'."
    assert "Traceback" not in missing.stderr
    debug = _run(["evaluate", "--ckpt", "nope.ckpt", "--data", "synthetic"], tmp_path, ATTRPRESERVE_DEBUG="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    quick = _run(["quickstart", "--out", "q", "--num-train", "16", "--num-test", "8", "--teacher-epochs", "1",
                  "--student-epochs", "1", "--views", "1", "--panels", "2", "--no-progress"], tmp_path)
    assert quick.returncode == 0, quick.stderr[-3000:]
    table = (tmp_path / "q/table.md").read_text()  # without --curves: no curve columns, no random-order row
    assert "| teacher |" in table and "deletion" not in table and "random order" not in table
    assert [r["model"] for r in json.loads((tmp_path / "q/table.json").read_text())] == [
        "teacher", "KD", "SSWA", "center (baseline)"]


def _tiny_ckpt(tmp_path: Path) -> Path:
    import pytorch_lightning as pl

    from attrpreserve.data import SyntheticDataModule
    from attrpreserve.models import vgg_small
    from attrpreserve.modules import DistillationModule

    module = DistillationModule(vgg_small(num_classes=3, width_divisor=4), vgg_small(num_classes=3, width_divisor=8))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, SyntheticDataModule(num_classes=3, num_train=8, num_val=4, num_test=4, batch_size=4))
    trainer.save_checkpoint(tmp_path / "s.ckpt")
    return tmp_path / "s.ckpt"


@pytest.mark.parametrize("args, expected", [
    (["evaluate", "--ckpt", "missing.ckpt", "--data", "synthetic"], "Checkpoint not found: 'missing.ckpt'"),
    (["evaluate", "--ckpt", "{ckpt}", "--data", "no/such/voc"], "`--data` to be 'synthetic' or a local VOC2012"),
    (["evaluate", "--ckpt", "{ckpt}", "--data", "synthetic", "--methods", "gradcan"], "gradcan"),
    (["evaluate", "--ckpt", "{ckpt}", "--data", "synthetic", "--layer", "conv9"], "Available: conv1_1"),
    (["evaluate", "--ckpt", "{ckpt}", "--data", "synthetic", "--method-arg", "ig.n_steps=4"], "add it to --methods"),
    (["fit", "--config", "configs/synthetic/distill_div8_sswa.yaml"], "`teacher_weights` to be a local weights file"),
])
def test_user_errors_print_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    ckpt = _tiny_ckpt(tmp_path) if any("{ckpt}" in a for a in args) else None
    capsys.readouterr()
    code = main([a.replace("{ckpt}", str(ckpt)) for a in args] + ["--device", "cpu", "--no-progress"] * (
        args[0] == "evaluate"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[0].startswith(f"attrpreserve {args[0]}: error: ") and expected in err[0], err
    assert len(err) == 2 and "Traceback" not in "\n".join(err)


def test_layer_error_lists_candidates_of_a_foreign_model():
    import torchvision

    from attrpreserve.models.layers import resolve_layer_name

    with pytest.raises(ValueError, match=r"Did you mean 'layer4'.*Available: layer4, layer4\.1, .*layer4\.1\.relu"):
        resolve_layer_name(torchvision.models.resnet18(), "layer5")


def test_torchvision_weight_name_is_read_from_a_prefilled_hub_cache(tmp_path, monkeypatch):
    import torch.hub
    import torchvision

    from attrpreserve.models import vgg16

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    reference = torchvision.models.vgg16_bn()
    body = {k: v.half() for k, v in reference.state_dict().items() if k.startswith("features.")}
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(body, cache / "vgg16_bn-6c64b313.pth")  # the file name torchvision's IMAGENET1K_V1 uses
    model = vgg16(num_classes=20, weights="IMAGENET1K_V1")
    assert torch.equal(model.features[0].weight, body["features.0.weight"].float())
    assert model.weights_source["path"] == str((cache / "vgg16_bn-6c64b313.pth").resolve())
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1"):  # a typo names the choices
        vgg16(num_classes=20, weights="IMAGENET1K_V9")


def test_voc_download_is_opt_in_and_uses_a_local_archive(tmp_path, monkeypatch, voc_root):
    import torchvision.datasets.utils as tv_utils
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    from attrpreserve.data import VOCDataModule

    calls = []
    monkeypatch.setattr(tv_utils, "_urlretrieve", lambda *a, **k: calls.append(a) or pytest.fail("network"))
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError):  # not asked: nothing downloads, the folder is missing
        VOCDataModule(root, image_size=64, num_workers=0).setup("test")
    root.mkdir()
    with tarfile.open(root / DATASET_YEAR_DICT["2012"]["filename"], "w") as archive:
        archive.add(voc_root.parent, arcname="VOCdevkit")
    # The archive stands in for the 2 GB download; torchvision checks it by md5, which it cannot match.
    monkeypatch.setattr(tv_utils, "check_integrity", lambda path, md5=None: Path(path).is_file())
    dm = VOCDataModule(root, image_size=64, num_workers=0, download=True)
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.localization_dataset) > 0 and not calls


def test_evaluate_wandb_without_a_training_run_names_a_run_after_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = tmp_path / "runs/mine/checkpoints"
    folder.mkdir(parents=True)
    ckpt = _tiny_ckpt(tmp_path).rename(folder / "last.ckpt")  # written with logger=False: no run in it
    assert main(["evaluate", "--ckpt", str(ckpt), "--data", "synthetic", "--max-images", "4", "--batch-size", "4",
                 "--device", "cpu", "--no-progress", "--wandb"]) == 0
    (run,) = (tmp_path / "runs/mine/wandb").glob("offline-run-*")
    records = wandb_records(run)
    assert records["config"]["evaluate"]["checkpoint"] == str(ckpt)
    assert records["config"]["evaluate"]["methods"] == ["gradcam"]
    assert "evaluate/paper/map" in records["summary"]
    assert b"mine-evaluate" in next(run.glob("*.wandb")).read_bytes()  # the run's name

"""`attrpreserve sweep`: grid keys and expansion, run names, per-run configs, resume, aggregation,
the plot; and one real sweep through the local pool and submitit's local executor."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attrpreserve.study import execute as execute_module
from attrpreserve.study import main
from attrpreserve.study.aggregate import recovered_share
from attrpreserve.study.execute import execute_run
from attrpreserve.study.grid import expand_grid, resolve_key, run_name
from attrpreserve.study.plan import check_folder, load_config, plan_runs, run_status, write_run_json

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
SSWA, KD, TEACHER = CONFIGS / "distill_div8_sswa.yaml", CONFIGS / "distill_div8_kd.yaml", CONFIGS / "teacher.yaml"


def _callback(config: dict, name: str) -> dict:
    """The init_args of the config's callback of class ``name`` (found independently of the harness)."""
    (found,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("." + name)]
    return found.get("init_args", {})


def _teacher_weights(config: dict) -> str:
    init_args = config["model"]["init_args"]
    return init_args["teacher_weights"] if "teacher_weights" in init_args else init_args["teacher"]["init_args"]["weights"]


# -- grid ------------------------------------------------------------------------------------------
def test_grid_is_the_product_and_keys_land_where_lightningcli_would_put_them(tmp_path):
    runs = plan_runs([SSWA], tmp_path, grid=[("callbacks.weight", ["10", "1000"]), ("--model.init_args.lr", ["0.1", "1e-3"])],
                     fixed=[("data.num_train", "16"), ("trainer.max_epochs", "1"), ("trainer.limit_train_batches", "2")],
                     seeds=[0, 1])
    assert len(runs) == 8 and len({r.folder for r in runs}) == 8
    got = {(r.grid["weight"], r.grid["lr"], r.seed) for r in runs}
    assert got == {(w, lr, s) for w in ("10", "1000") for lr in ("0.1", "1e-3") for s in (0, 1)}
    for run in runs:
        config = run.config
        assert _callback(config, "AttributionMatching")["weight"] == float(run.grid["weight"])
        assert config["model"]["init_args"]["lr"] == float(run.grid["lr"])
        assert config["data"]["init_args"]["num_train"] == 16
        assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["limit_train_batches"] == 2
        assert config["model"]["init_args"]["student"]["init_args"]["width_divisor"] == 8  # untouched
    # the original config file is not changed
    assert _callback(load_config(SSWA), "AttributionMatching")["weight"] == 100.0


def test_short_keys_and_full_flags_resolve_to_the_same_place():
    config = load_config(SSWA)
    assert resolve_key(config, "model.lr").path == resolve_key(config, "--model.init_args.lr").path \
        == ("model", "init_args", "lr")
    assert resolve_key(config, "model.student.width_divisor").path == \
        ("model", "init_args", "student", "init_args", "width_divisor")
    weight = resolve_key(config, "callbacks.weight")
    assert config["trainer"]["callbacks"][weight.path[2]]["class_path"].endswith("AttributionMatching")
    # an argument of the class that the config leaves at its default is a valid key too
    assert resolve_key(config, "callbacks.AttributionMatching.drop_prob").path[-1] == "drop_prob"
    assert resolve_key(config, "trainer.limit_val_batches").path == ("trainer", "limit_val_batches")
    assert resolve_key(config, "--ckpt_path").passthrough


def test_unknown_and_ambiguous_keys_are_errors_that_list_what_exists():
    config = load_config(SSWA)
    with pytest.raises(ValueError, match="Unknown sweep key 'model.lrr'") as err:
        resolve_key(config, "model.lrr", "sswa.yaml")
    for listed in ("model.lr", "data.num_train", "trainer.max_epochs", "callbacks.weight"):
        assert listed in str(err.value)
    with pytest.raises(ValueError, match="Unknown sweep key 'callbacks.weight'"):
        resolve_key(load_config(KD), "callbacks.weight")  # plain KD has no matching callback
    with pytest.raises(ValueError, match="ambiguous.*callbacks.<ClassName>.save_last"):
        resolve_key(config, "callbacks.save_last")  # two ModelCheckpoints
    with pytest.raises(ValueError, match="pytorch_lightning.Trainer"):
        resolve_key(config, "trainer.max_epoch")
    with pytest.raises(ValueError, match="--seeds"):
        resolve_key(config, "seed_everything")
    with pytest.raises(ValueError, match="both `--set` and `--grid`"):
        plan_runs([SSWA], "unused", grid=[("model.lr", ["0.1"])], fixed=[("model.lr", "0.2")])
    with pytest.raises(FileNotFoundError, match="--config"):
        plan_runs([CONFIGS / "nope.yaml"], "unused")


def test_expand_grid_order_and_duplicates():
    points = expand_grid([("a", ["1", "2"]), ("b", ["x", "y", "z"])])
    assert len(points) == 6 and points[0] == (("a", "1"), ("b", "x")) and points[-1] == (("a", "2"), ("b", "z"))
    with pytest.raises(ValueError, match="once"):
        expand_grid([("a", ["1"]), ("a", ["2"])])


# -- names, per-run configs ------------------------------------------------------------------------
def test_run_names_are_readable_and_stable(tmp_path):
    assert run_name("distill_div8_sswa", [("weight", "100")], 0) == "distill_div8_sswa/weight=100/seed=0"
    first = plan_runs([SSWA, KD], tmp_path, fixed=[("model.lr", "0.01")], seeds=[0, 2])
    again = plan_runs([KD, SSWA], tmp_path, fixed=[("model.lr", "0.01")], seeds=[2, 0])
    assert sorted(r.id for r in first) == sorted(r.id for r in again) == [
        "distill_div8_kd/seed=0", "distill_div8_kd/seed=2", "distill_div8_sswa/seed=0", "distill_div8_sswa/seed=2"]
    swept = plan_runs([SSWA], tmp_path, grid=[("callbacks.weight", ["1000", "10"])])
    assert [r.id for r in swept] == ["distill_div8_sswa/weight=1000/seed=0", "distill_div8_sswa/weight=10/seed=0"]


def test_each_run_writes_only_into_its_own_folder(tmp_path):
    (run,) = plan_runs([SSWA], tmp_path / "out", grid=[("callbacks.weight", ["10"])], seeds=[3],
                       teacher_weights="teachers/seed={seed}/final.ckpt")
    folder = str(tmp_path / "out" / "distill_div8_sswa" / "weight=10" / "seed=3")
    config = run.config
    assert run.folder == folder and config["trainer"]["default_root_dir"] == folder
    dirpaths = [c["init_args"]["dirpath"] for c in config["trainer"]["callbacks"]
                if c["class_path"].endswith("ModelCheckpoint")]
    assert len(dirpaths) == 2 and set(dirpaths) == {folder + "/checkpoints"}
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == folder
    assert config["data"]["init_args"]["cache_dir"] == folder + "/teacher_cache" == run.cache_dir
    assert _teacher_weights(config) == "teachers/seed=3/final.ckpt"  # whichever key the config uses
    assert "runs/synthetic" not in yaml.safe_dump(config)
    assert run.evaluate_args[:2] == ["--data", "synthetic"]


# -- resume ----------------------------------------------------------------------------------------
def _fake_results(folder: Path, point_acc: float = 0.5, **metrics) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = {"metrics": {"map": metrics.get("map", 0.8), "f1": metrics.get("f1", 0.7), "num_images": 10},
              "methods": {"gradcam": {"auc": metrics.get("auc", 0.9), "point_acc": point_acc,
                                      "cos": metrics.get("cos"), "l2": metrics.get("l2"),
                                      "num_pairs": 20, "num_skipped": 0}},
              "protocol": {"name": folder.name}}
    (folder / "results.json").write_text(json.dumps(result))


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ckpt")


def test_a_half_finished_sweep_schedules_only_what_is_missing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    args = ["--config", str(SSWA), "--grid", "callbacks.weight=10,100", "--seeds", "0,1", "--out", str(out)]
    runs = {r.id: r for r in plan_runs([SSWA], out, grid=[("callbacks.weight", ["10", "100"])], seeds=[0, 1])}
    done, fitted, partial, new = (runs[f"distill_div8_sswa/weight={w}/seed={s}"] for w, s in
                                  (("10", 0), ("10", 1), ("100", 0), ("100", 1)))
    _touch(Path(done.folder, "final.ckpt"))
    _fake_results(Path(done.folder, "results", "all"))
    _touch(Path(fitted.folder, "final.ckpt"))
    _touch(Path(partial.folder, "checkpoints", "last.ckpt"))
    assert [run_status(r) for r in (done, fitted, partial, new)] == ["done", "fitted", "partial", "new"]
    # evaluating a second protocol makes a done run "fitted" again
    paper = plan_runs([SSWA], out, grid=[("callbacks.weight", ["10"])], protocols=["all", "paper"])[0]
    assert run_status(paper) == "fitted"

    assert main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "done 1, to evaluate 1, to resume 1, new 1" in text
    assert done.id not in text and f"{fitted.id} [fitted]: evaluate all" in text
    assert f"--ckpt_path {partial.folder}/checkpoints/last.ckpt" in text
    assert f"{new.id} [new]" in text and text.count("--ckpt_path") == 1

    # what the workers run (subprocesses faked): fit resumes from the checkpoint or starts anew,
    # a fitted run is only evaluated, the done run is not touched
    calls = []

    def fake_call(command, log, spec):
        calls.append((spec.id, command[3], command))
        if command[3] == "fit":
            _touch(Path(spec.folder, "checkpoints", "last.ckpt"))
        else:
            _fake_results(Path(command[command.index("--out") + 1]))
        return 0

    monkeypatch.setattr(execute_module, "_call", fake_call)
    assert main(args) == 0
    steps = {(run_id, step) for run_id, step, _ in calls}
    assert steps == {(fitted.id, "evaluate"), (partial.id, "fit"), (partial.id, "evaluate"), (new.id, "fit"),
                     (new.id, "evaluate")}
    fits = {run_id: command for run_id, step, command in calls if step == "fit"}
    assert fits[partial.id][-2:] == ["--ckpt_path", f"{partial.folder}/checkpoints/last.ckpt"]
    assert "--ckpt_path" not in fits[new.id]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done"] * 4
    assert {r["id"] for r in manifest["runs"]} == set(runs)
    assert all(Path(r["folder"], "final.ckpt").is_file() for r in manifest["runs"])


def test_a_failing_run_is_reported_and_retried_and_a_changed_run_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    (run,) = plan_runs([SSWA], out)
    monkeypatch.setattr(execute_module, "_call", lambda command, log, spec: 3)
    outcome = execute_run(run)
    assert outcome["status"] == "failed" and outcome["step"] == "fit" and outcome["returncode"] == 3
    assert json.loads(Path(run.folder, "run.json").read_text())["status"] == "failed"
    assert run_status(run) == "new"
    (changed,) = plan_runs([SSWA], out, fixed=[("model.lr", "0.5")])
    assert changed.folder == run.folder
    with pytest.raises(ValueError, match="holds a different run"):
        check_folder(changed)
    write_run_json(run, status="done")
    check_folder(run)  # the same run: accepted


def test_slurm_without_submitit_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ValueError, match=r"attrpreserve\[cluster\]"):
        main(["--config", str(SSWA), "--out", str(tmp_path), "--engine", "slurm"])


class _FakeSlurm:
    """Stands in for submitit on a machine without SLURM: records submissions, reports job states."""

    submitted: list = []
    parameters: dict = {}
    states: dict = {}

    class AutoExecutor:
        def __init__(self, folder, cluster=None):
            self.cluster = cluster

        def update_parameters(self, **kwargs):
            _FakeSlurm.parameters.update(kwargs)

        def map_array(self, fn, specs):
            jobs = []
            for spec in specs:
                _FakeSlurm.submitted.append(spec.id)
                jobs.append(type("Job", (), {"job_id": f"77_{len(_FakeSlurm.submitted)}"})())
            return jobs

    class SlurmJob:
        def __init__(self, folder, job_id):
            self.job_id = job_id

        def get_info(self, mode="standard"):
            return {"State": _FakeSlurm.states.get(self.job_id, "UNKNOWN")}


def test_slurm_submits_a_job_array_and_never_a_run_whose_job_is_still_out(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", _FakeSlurm)
    for name, empty in (("submitted", []), ("parameters", {}), ("states", {})):
        monkeypatch.setattr(_FakeSlurm, name, empty)
    args = ["--config", str(SSWA), "--grid", "callbacks.weight=10,100", "--out", str(tmp_path), "--engine", "slurm",
            "--slurm-partition", "gpu", "--gpus-per-node", "1", "--timeout-min", "90", "--slurm-param", "exclude=n1",
            "--workers", "4", "--no-wait"]
    assert main(args) == 0
    assert _FakeSlurm.submitted == ["distill_div8_sswa/weight=10/seed=0", "distill_div8_sswa/weight=100/seed=0"]
    assert {k: _FakeSlurm.parameters[k] for k in ("slurm_partition", "gpus_per_node", "timeout_min",
                                                  "slurm_additional_parameters", "slurm_array_parallelism")} == \
        {"slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 90,
         "slurm_additional_parameters": {"exclude": "n1"}, "slurm_array_parallelism": 4}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [r["job_id"] for r in manifest["runs"]] == ["77_1", "77_2"]
    # the first job still runs, the second one died: only the second run is submitted again
    _FakeSlurm.states.update({"77_1": "RUNNING", "77_2": "CANCELLED by 12"})
    assert main(args) == 0
    assert _FakeSlurm.submitted[2:] == ["distill_div8_sswa/weight=100/seed=0"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [r["job_id"] for r in manifest["runs"]] == ["77_1", "77_3"]


# -- aggregation -----------------------------------------------------------------------------------
POINT_ACC = {("kd", 0): 0.40, ("kd", 1): 0.50, ("kd", 2): 0.45,
             ("10", 0): 0.55, ("10", 1): 0.60, ("10", 2): 0.50,
             ("100", 0): 0.70, ("100", 1): 0.65, ("100", 2): 0.75}
TEACHER_ACC = {0: 0.80, 1: 0.90, 2: 0.85}


def _fabricate(tmp_path: Path) -> tuple[Path, list[str]]:
    """A finished sweep (SSWA weight 10/100 x 3 seeds) and per-seed teacher and KD runs, results only."""
    out = tmp_path / "sweep"
    for run in plan_runs([SSWA], out, grid=[("callbacks.weight", ["10", "100"])], seeds=[0, 1, 2]):
        acc = POINT_ACC[(run.grid["weight"], run.seed)]
        _touch(Path(run.folder, "final.ckpt"))
        _fake_results(Path(run.folder, "results", "all"), acc, map=0.7 + acc / 10, cos=acc + 0.2, l2=10 - acc)
    for seed in (0, 1, 2):
        _fake_results(tmp_path / "teacher" / f"seed={seed}" / "results" / "all", TEACHER_ACC[seed])
        _fake_results(tmp_path / "kd" / "distill_div8_kd" / f"seed={seed}" / "results" / "all",
                      POINT_ACC[("kd", seed)], cos=0.5, l2=9.0)
    refs = ["--reference", f"teacher={tmp_path / 'teacher'}", "--reference", f"KD={tmp_path / 'kd'}"]
    return out, refs


def test_aggregation_matches_means_and_stds_computed_by_hand(tmp_path, capsys):
    out, refs = _fabricate(tmp_path)
    args = ["--config", str(SSWA), "--grid", "callbacks.weight=10,100", "--seeds", "0,1,2", "--out", str(out)]
    assert main([*args, "--aggregate-only", *refs]) == 0
    table = json.loads((out / "table.json").read_text())
    (entry,) = table["tables"]
    rows = {row["grid"]["weight"]: row for row in entry["rows"]}
    assert list(rows) == ["10", "100"] and entry["protocol"] == "all" and table["grid_keys"] == ["weight"]
    for weight, row in rows.items():
        accs = [100 * POINT_ACC[(weight, s)] for s in (0, 1, 2)]
        assert row["seeds"] == [0, 1, 2]
        assert row["point_acc"]["mean"] == pytest.approx(sum(accs) / 3)
        assert row["point_acc"]["std"] == pytest.approx(math.sqrt(sum((a - sum(accs) / 3) ** 2 for a in accs) / 2))
        assert [row["point_acc"]["values"][str(s)] for s in (0, 1, 2)] == pytest.approx(accs)
        assert row["map"]["mean"] == pytest.approx(statistics.fmean(100 * (0.7 + a / 1000) for a in accs))
        assert row["cos"]["mean"] == pytest.approx(statistics.fmean(a / 100 + 0.2 for a in accs))
        assert row["auc"]["mean"] == pytest.approx(90.0) and row["auc"]["std"] == pytest.approx(0.0)
        # per seed: (sswa - kd) / (teacher - kd)
        shares = [(POINT_ACC[(weight, s)] - POINT_ACC[("kd", s)]) / (TEACHER_ACC[s] - POINT_ACC[("kd", s)])
                  for s in (0, 1, 2)]
        assert [row["recovered"]["values"][str(s)] for s in (0, 1, 2)] == pytest.approx(shares)
        assert row["recovered"]["mean"] == pytest.approx(statistics.fmean(shares))
        assert row["recovered"]["std"] == pytest.approx(statistics.stdev(shares))
    lines = (out / "table.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("protocol,method,config,weight,n,seeds,map_mean")
    assert lines[1].startswith("all,gradcam,distill_div8_sswa,10,3,0;1;2,")
    markdown = (out / "table.md").read_text()
    assert "| distill_div8_sswa | 100 | 3 | " in markdown and f"{100 * statistics.fmean([0.7, 0.65, 0.75]):.2f} ± " \
        f"{100 * statistics.stdev([0.7, 0.65, 0.75]):.2f}" in markdown
    assert "Reference teacher (seeds 0, 1, 2)" in markdown
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "recovered (%)" in capsys.readouterr().out


def test_two_arms_without_a_grid_and_a_single_reference_file(tmp_path):
    out = tmp_path / "arms"
    for run in plan_runs([KD, SSWA], out, seeds=[0, 1]):
        _touch(Path(run.folder, "final.ckpt"))
        _fake_results(Path(run.folder, "results", "all"), 0.4 + 0.1 * run.seed + (0.2 if "sswa" in run.id else 0))
    _fake_results(tmp_path / "teacher_results", 0.9)
    args = ["--config", str(KD), "--config", str(SSWA), "--seeds", "0,1", "--out", str(out), "--aggregate-only",
            "--reference", f"teacher={tmp_path / 'teacher_results' / 'results.json'}",
            "--reference", f"KD={out / 'distill_div8_kd'}"]
    assert main(args) == 0
    rows = json.loads((out / "table.json").read_text())["tables"][0]["rows"]
    assert [r["config"] for r in rows] == ["distill_div8_kd", "distill_div8_sswa"]
    sswa = rows[1]["recovered"]["values"]
    assert sswa["0"] == pytest.approx(recovered_share(60.0, 90.0, 40.0))  # one teacher run for every seed
    assert sswa["1"] == pytest.approx(recovered_share(70.0, 90.0, 50.0))
    assert (out / "sweep.png").stat().st_size > 10_000
    # the manifest is enough to aggregate again
    (out / "table.json").unlink()
    assert main(["--out", str(out), "--aggregate-only"]) == 0 and (out / "table.json").is_file()


# -- a real sweep ----------------------------------------------------------------------------------
TINY = ["--set", "data.num_train=16", "--set", "data.num_val=8", "--set", "data.num_test=8",
        "--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=1",
        "--set", "trainer.limit_val_batches=1"]


@pytest.mark.slow
def test_a_real_sweep_through_the_local_pool_then_submitit_resumes_it(tmp_path, monkeypatch):
    """A tiny teacher by `attrpreserve fit`; SSWA weight 10/100 at seed 0 by 2 local workers; then the
    same sweep with seeds 0,1 by submitit's LocalExecutor: the seed-0 runs are skipped, seed 1 runs."""
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)  # relative paths of the configs (runs/synthetic/...) land here
    monkeypatch.setenv("WANDB_MODE", "offline")
    fit = subprocess.run(
        [sys.executable, "-m", "attrpreserve", "fit", "--config", str(TEACHER), "--trainer.max_epochs", "1",
         "--data.init_args.num_train", "16", "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
         "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"],
        capture_output=True, text=True)
    teacher = tmp_path / "runs" / "synthetic" / "teacher" / "checkpoints" / "last.ckpt"
    assert fit.returncode == 0 and teacher.is_file(), fit.stdout[-2000:] + fit.stderr[-2000:]
    out = tmp_path / "sweep"
    args = ["--config", str(SSWA), "--grid", "callbacks.weight=10,100", *TINY, "--teacher-weights", str(teacher),
            "--out", str(out), "--workers", "2", "--device", "cpu", "--max-batches", "1"]
    assert main([*args, "--seeds", "0"]) == 0
    assert main([*args, "--seeds", "0,1", "--engine", "submitit-local"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["runs"]) == 4 and {r["status"] for r in manifest["runs"]} == {"done"}
    for run in manifest["runs"]:
        folder = Path(run["folder"])
        assert (folder / "final.ckpt").is_file() and (folder / "results" / "all" / "results.json").is_file()
        assert not (folder / "teacher_cache").exists()  # removed after fit
        assert (folder / "fit.log").read_text().count("\n=== ") == 1  # seed 0 was not fitted again
        config = yaml.safe_load((folder / "sweep_config.yaml").read_text())
        assert _callback(config, "AttributionMatching")["weight"] == float(run["grid"]["weight"])
    assert list((out / ".submitit").rglob("*_result.pkl"))  # seed 1 went through submitit
    assert not (tmp_path / "runs" / "synthetic" / "distill_div8_sswa").exists()  # nothing outside --out
    assert not (tmp_path / ".cache").exists()
    rows = json.loads((out / "table.json").read_text())["tables"][0]["rows"]
    assert [(r["grid"]["weight"], r["seeds"]) for r in rows] == [("10", [0, 1]), ("100", [0, 1])]
    for row in rows:
        accs = [100 * json.loads((out / "distill_div8_sswa" / f"weight={row['grid']['weight']}" / f"seed={s}" /
                                  "results" / "all" / "results.json").read_text())["methods"]["gradcam"]["point_acc"]
                for s in (0, 1)]
        assert row["point_acc"]["mean"] == pytest.approx(sum(accs) / 2)
        assert row["point_acc"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    assert (out / "sweep.png").is_file() and (out / "table.md").is_file()


def test_full_flags_on_the_command_line_need_no_equals_sign(tmp_path, capsys):
    assert main(["--config", str(SSWA), "--set", "--model.init_args.lr=0.01", "--grid", "--trainer.max_epochs=1,2",
                 "--out", str(tmp_path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "distill_div8_sswa/max_epochs=1/seed=0 [new]" in text and "distill_div8_sswa/max_epochs=2/seed=0" in text
    assert not (tmp_path / "manifest.json").exists()  # a dry run writes nothing

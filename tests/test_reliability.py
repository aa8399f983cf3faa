"""One process per run folder, and every written path inside its root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from passion_kit.config import ExperimentConfig
from passion_kit.io import RunInUseError, RunLock, check_name, inside

TINY = [
    "data.phantom_cases=10",
    "data.phantom_size=32",
    "data.patch_size=16",
    "eval.window=16",
    "train.epochs=1",
    "train.progress=false",
]


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "passion_kit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def sleeper():
    """A live process of this host, to hold a lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_lock_names_its_live_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, sleeper):
    lock = tmp_path / ".lock"
    lock.write_text(f"{sleeper.pid} {socket.gethostname()}\n")
    with pytest.raises(RunInUseError, match=f"in use by process {sleeper.pid}"):
        with RunLock(tmp_path):
            pass
    assert lock.read_text().split()[0] == str(sleeper.pid)  # left to its holder
    sleeper.kill()
    sleeper.wait()
    with RunLock(tmp_path) as held:  # the holder has died: taken over
        assert held.held and lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()


def test_a_second_train_on_a_locked_run_stops_naming_the_first(tmp_path, sleeper):
    cfg = ExperimentConfig.preset("cpu").override([*TINY, f"train.run_dir={tmp_path / 'runs'}"])
    run = tmp_path / "runs" / cfg.run_name()
    run.mkdir(parents=True)
    (run / ".lock").write_text(f"{sleeper.pid} {socket.gethostname()}\n")
    (run / ".tmp-inflight").write_text("the first process's checkpoint, being written")
    result = _cli(
        "train", *TINY, f"train.run_dir={tmp_path / 'runs'}",
        f"data.root={tmp_path / 'phantom'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(sleeper.pid) in errors[0], result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]  # the phantom's progress before
    assert (run / ".tmp-inflight").exists()  # its temp file is not cleaned under it
    assert not (run / "config.json").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.dataset=../../../x", "data.dataset"),
        ("data.dataset=..", "data.dataset"),
        ("train.name=a/b", "train.name"),
        ("data.test_split=../x", "data.test_split"),
        ("objective.beta_range=[4, 0.1]", "objective.beta_range"),
        ("train.optimizer=sgd", "train.optimizer"),
    ],
)
def test_names_that_become_paths_and_bad_values_are_refused_at_parse_time(tmp_path, override, key):
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    result = _cli("train", *TINY, override, f"train.run_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0]
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert not (tmp_path / "runs").exists()


def test_check_name_and_inside():
    assert check_name("phantom_rfnet_passion_mr2468_s0", "x") == "phantom_rfnet_passion_mr2468_s0"
    for bad in ("", "..", ".", "a/b", "a\\b", "x" * 256):
        with pytest.raises(ValueError, match="what"):
            check_name(bad, "what")
    with pytest.raises(ValueError, match="leads outside"):
        inside("/tmp/root", "eval", "../../x", what="the split")
    assert inside("/tmp/root", "eval", "test", what="x").name == "test"


def test_reproduce_refuses_a_grid_value_that_leads_outside_its_out_folder(tmp_path):
    from passion_kit.reproduce import GRIDS, reproduce, with_overrides

    grid = with_overrides(GRIDS["default"], missing_rates=["../../x"], seeds=[0])
    with pytest.raises(ValueError, match="name"):
        reproduce(grid, out=tmp_path / "out", jobs=1)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


# --- a run knows what made it ------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(phantom_root, tmp_path_factory):
    from passion_kit.engine.train import fit
    from tests.conftest import tiny_config

    runs = tmp_path_factory.mktemp("runs")
    first = fit(tiny_config(phantom_root, runs, "train.epochs=1", "train.name=first"))
    second = fit(tiny_config(phantom_root, runs, "train.epochs=1", "train.name=second"))
    return first, second


def _copy_run(run, tmp_path):
    import shutil

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def test_another_runs_checkpoint_copied_into_a_run_folder_is_refused(two_runs, tmp_path):
    import json
    import shutil

    from passion_kit.engine.evaluate import evaluate_run

    first, second = (_copy_run(r, tmp_path) for r in two_runs)
    ids = [json.loads((r / "meta.json").read_text())["run_id"] for r in (first, second)]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    shutil.copy(second / "checkpoint_last.pt", first / "checkpoint_last.pt")
    with pytest.raises(ValueError, match=f"written by run {ids[1]}"):
        evaluate_run(first, device="cpu", progress=False, max_cases=1)
    assert not (first / "eval").exists()


def test_a_checkpoint_with_non_finite_weights_is_refused_before_evaluation(two_runs, tmp_path):
    import torch

    from passion_kit.engine.evaluate import evaluate_run

    run = _copy_run(two_runs[0], tmp_path)
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, run / "checkpoint_last.pt")
    with pytest.raises(ValueError, match="non-finite weights"):
        evaluate_run(run, device="cpu", progress=False, max_cases=1)


def test_evaluation_records_its_settings_and_is_redone_for_other_ones(two_runs, tmp_path):
    import json

    import pandas as pd

    from passion_kit.engine.evaluate import ensure_evaluated

    run = _copy_run(two_runs[0], tmp_path)
    paths = ensure_evaluated(run, device="cpu", progress=False, max_cases=1)
    settings = json.loads((run / "eval" / "test" / "settings.json").read_text())
    assert settings["eval"]["max_cases"] == 1 and len(settings["checkpoint_sha256"]) == 64
    assert pd.read_csv(paths["per_case"])["case_id"].nunique() == 1
    stamp = paths["summary"].stat().st_mtime_ns
    ensure_evaluated(run, device="cpu", progress=False, max_cases=1)  # the same: kept
    assert paths["summary"].stat().st_mtime_ns == stamp
    ensure_evaluated(run, device="cpu", progress=False, max_cases=2)  # other settings: redone
    assert pd.read_csv(paths["per_case"])["case_id"].nunique() == 2
    assert pd.read_csv(paths["summary"]).shape[0] == 16


def test_a_kill_while_the_tables_are_written_leaves_the_old_ones_whole(
    two_runs, tmp_path, monkeypatch
):
    from pathlib import Path

    import pandas as pd

    from passion_kit.engine.evaluate import evaluate_run

    run = _copy_run(two_runs[0], tmp_path)
    paths = evaluate_run(run, device="cpu", progress=False, max_cases=1)
    before = {k: p.read_text() for k, p in paths.items()}
    real = Path.write_text

    def dying(self, text, *args, **kwargs):
        if self.name == "summary.csv":
            raise KeyboardInterrupt  # killed between the tables' writes
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", dying)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run, device="cpu", progress=False, max_cases=2)
    monkeypatch.undo()
    assert {k: p.read_text() for k, p in paths.items()} == before  # the old tables, whole
    assert pd.read_csv(paths["per_case"])["case_id"].nunique() == 1
    evaluate_run(run, device="cpu", progress=False, max_cases=2)  # the leftover is cleaned
    assert [p.name for p in (run / "eval").iterdir()] == ["test"]


def test_a_hand_edited_config_json_is_named_and_rewritten_on_resume(phantom_root, tmp_path, capsys):
    import json

    from passion_kit.engine.train import fit
    from tests.conftest import tiny_config

    cfg = tiny_config(phantom_root, tmp_path, "train.epochs=2")
    run = fit(cfg, stop_after=1)
    edited = json.loads((run / "config.json").read_text())
    edited["train"]["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(edited))
    capsys.readouterr()
    fit(cfg)
    out = capsys.readouterr().out
    assert "notice:" in out and "train.lr" in out
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == cfg.train.lr


def test_a_smoke_grid_point_is_not_reused_as_the_real_one(tmp_path):
    import nbformat

    from passion_kit.reproduce import GRIDS, grid_points, reproduce, with_overrides

    smoke = with_overrides(GRIDS["default"], seeds=[0], objectives=["baseline"])
    smoke.parameters = {**smoke.parameters, "smoke": True}
    real = with_overrides(smoke, parameters={**smoke.parameters, "smoke": False})
    point = grid_points(smoke)[0]
    assert grid_points(real)[0]["name"] == point["name"]  # smoke is not in the name
    out = tmp_path / "out"
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"parameters": {**point, "run_dir": "anywhere"}}
    (out / "notebooks").mkdir(parents=True)
    nbformat.write(nb, out / "notebooks" / f"{point['name']}.ipynb")
    summary = out / "runs" / point["name"] / "eval" / "test" / "summary.csv"
    summary.parent.mkdir(parents=True)
    summary.write_text("combination,dice_WT\nmean,0.1\n")
    with pytest.raises(ValueError, match="smoke: True there, False now"):
        reproduce(real, out=out, jobs=1, progress=False, log=lambda *a: None)


# --- bad inputs through the command line: one error line, nothing written outside -----------
def _bad_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"preset": ["cpu"]}')
    return ["train", "--config", str(path)]


def _config_file_unknown_preset(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: nope\n")
    return ["train", "--config", str(path)]


def _a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("a file where a folder is needed")
    return path


def _data_root_under_a_file(tmp_path):
    return ["train", *TINY, f"data.root={_a_file(tmp_path) / 'phantom'}"]


def _run_dir_under_a_file(tmp_path):
    return ["train", *TINY, f"data.root={tmp_path / 'phantom'}",
            f"train.run_dir={_a_file(tmp_path) / 'runs'}"]  # fmt: skip


def _dataset_json_spacing(tmp_path):
    import json

    from passion_kit.data import make_phantom

    root = tmp_path / "phantom"
    make_phantom(root, num_cases=10, size=32, progress=False)
    description = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(description | {"spacing": [0, 0, 0]}))
    return ["train", *TINY, f"data.root={root}"]


def _dataset_json_list(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "dataset.json").write_text("[]")
    return ["train", *TINY, f"data.root={root}", "data.phantom_cases=0"]


BAD_INPUTS = [
    # (id, argv or a function of tmp_path giving it, exit status, words the error line names)
    ("dataset-path", ["train", *TINY, "data.dataset=../../../x"], 2, "data.dataset"),
    ("beta-range-inverted", ["train", *TINY, "objective.beta_range=[4, 0.1]"], 2, "beta_range"),
    ("name-path", ["train", *TINY, "train.name=../x"], 2, "train.name"),
    ("split-path", ["train", *TINY, "data.train_split=../../x"], 2, "data.train_split"),
    ("optimizer", ["train", *TINY, "train.optimizer=sgd"], 2, "train.optimizer"),
    ("model-option", ["train", *TINY, 'model.options={"nope": 1}'], 2, "model.options"),
    ("objective-option", ["train", *TINY, 'objective.options={"nope": 1}'], 2, "objective.options"),
    (
        "model-option-value",
        ["train", *TINY, "model.backbone=mmformer", 'model.options={"kernel": 2}'],
        2,
        "model.options",
    ),
    ("preset", ["train", "--preset", "nope", *TINY], 2, "preset"),
    ("patch-rule", ["train", *TINY, "data.patch_size=[8, 8, 8]"], 2, "data.patch_size"),
    ("patch-zero", ["train", *TINY, "data.patch_size=[0, 16, 16]"], 2, "data.patch_size"),
    ("patch-over-phantom", ["train", *TINY, "data.patch_size=48"], 2, "data.phantom_size"),
    ("width", ["train", *TINY, "model.width=3"], 2, "model.width"),
    ("jitter", ["train", *TINY, "data.jitter=nope"], 2, "data.jitter"),
    ("setting", ["train", *TINY, "data.setting=full"], 2, "data.setting"),
    ("window", ["train", *TINY, "eval.window=[0, 16, 16]"], 2, "eval.window"),
    ("backbone", ["train", *TINY, "model.backbone=unet"], 2, "model.backbone"),
    ("objective", ["train", *TINY, "objective.name=nope"], 2, "objective.name"),
    ("device", ["train", *TINY, "train.device=tpu"], 2, "train.device"),
    ("no-cuda", ["train", *TINY, "train.device=cuda:7"], 2, "train.device"),
    ("evaluate-device", ["evaluate", "nowhere", "--device", "tpu"], 2, "--device"),
    ("reproduce-seeds", ["reproduce", "--seeds", "a"], 2, "--seeds"),
    ("reproduce-jobs", ["reproduce", "--jobs", "x"], 2, "--jobs"),
    ("config-preset-list", _bad_config_file, 1, "preset"),
    ("config-file-preset", _config_file_unknown_preset, 2, "preset"),
    ("config-file-folder", lambda tmp: ["train", "--config", str(tmp)], 1, "a folder"),
    ("dataset-json-list", _dataset_json_list, 1, "dataset.json"),
    ("dataset-json-spacing", _dataset_json_spacing, 1, "spacing must be voxel sizes > 0"),
    ("name-too-long", ["train", *TINY, f"train.name={'x' * 256}"], 2, "train.name"),
    ("data-root-unwritable", _data_root_under_a_file, 1, "cannot write the prepared cases"),
    ("run-dir-unwritable", _run_dir_under_a_file, 1, "cannot write runs"),
    ("quickstart-patch", ["quickstart", "--patch-size", "4096"], 2, "--patch-size"),
    ("evaluate-max-cases", ["evaluate", "nowhere", "--max-cases", "-1"], 2, "--max-cases"),
]


@pytest.mark.parametrize(
    ("argv", "status", "named"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_a_bad_input_gives_one_error_line_and_writes_nothing_outside(tmp_path, argv, status, named):
    work = tmp_path / "work"
    work.mkdir()
    args = argv(work) if callable(argv) else argv
    given = "--config" in args or any(a.startswith("train.run_dir=") for a in args)
    args = [*args, f"train.run_dir={work / 'runs'}"] if args[0] == "train" and not given else args
    outside = sorted(p.name for p in tmp_path.parent.iterdir())
    result = _cli(*args, cwd=work)
    assert result.returncode == status, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == outside
    assert not (work / "runs").exists() or not any((work / "runs").rglob("checkpoint*"))


def test_the_kernel_folders_of_a_killed_grid_are_removed_at_the_next_start(tmp_path):
    import tempfile

    from passion_kit.reproduce import KERNEL_PREFIX, remove_orphan_kernels

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = Path(tempfile.mkdtemp(prefix=KERNEL_PREFIX))
    (orphan / "owner").write_text(str(dead.pid))
    (orphan / "connection.json").write_text("{}")
    alive = Path(tempfile.mkdtemp(prefix=KERNEL_PREFIX))
    (alive / "owner").write_text(str(os.getpid()))
    try:
        assert orphan in remove_orphan_kernels()
        assert not orphan.exists() and alive.exists()
    finally:
        import shutil

        shutil.rmtree(alive, ignore_errors=True)


def test_phantom_generation_checks_the_disk_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from passion_kit.data import make_phantom
    from passion_kit.io import NoSpaceError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(NoSpaceError, match=r"1 MiB free, 10 prepared case\(s\) needs about"):
        make_phantom(tmp_path / "phantom", num_cases=10, size=32, progress=False)
    assert not (tmp_path / "phantom" / "cases").exists() or not any(
        (tmp_path / "phantom" / "cases").iterdir()
    )


@pytest.mark.parametrize(
    ("extra", "status", "named"),
    [
        (["--split", "../../x"], 2, "the split must be a name"),
        (["--checkpoint", "{tmp}/list.pt"], 1, "not a passion-kit checkpoint"),
        (["--checkpoint", "{tmp}/code.pt"], 1, "more than tensors, numbers, strings"),
    ],
)
def test_evaluate_refuses_a_bad_split_or_checkpoint_on_one_line(
    two_runs, tmp_path, extra, status, named
):
    import fractions

    import torch

    run = _copy_run(two_runs[0], tmp_path)
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    torch.save(state | {"model": list(state["model"].values())}, tmp_path / "list.pt")
    torch.save(state | {"extra": fractions.Fraction(1, 3)}, tmp_path / "code.pt")  # a class
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    args = [a.format(tmp=tmp_path) for a in extra]
    result = _cli("evaluate", str(run), "--device", "cpu", "--max-cases", "1", *args, cwd=tmp_path)
    assert result.returncode == status, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert not (run / "eval").exists()
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before


def test_a_resume_that_cannot_write_stops_before_training(
    two_runs, phantom_root, tmp_path, monkeypatch
):
    import passion_kit.engine.train as train
    from tests.conftest import tiny_config

    run = _copy_run(two_runs[0], tmp_path)
    cfg = tiny_config(phantom_root, tmp_path, "train.epochs=2", f"train.name={run.name}")

    def refuse(folder, what):
        raise PermissionError(f"{folder}: cannot write {what} there (Read-only file system)")

    def never(*args, **kwargs):
        raise AssertionError("trained before checking that the run can be written")

    monkeypatch.setattr(train, "check_writable", refuse)
    monkeypatch.setattr(train, "_train_one_epoch", never)
    with pytest.raises(PermissionError, match="cannot write runs there"):
        train.fit(cfg)

"""One process per run folder, and every written path inside its root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

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

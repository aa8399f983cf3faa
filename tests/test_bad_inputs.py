"""Bad files and values: one clear error naming the file or key, nothing half-written."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
import torch

from passion_kit.__main__ import main
from passion_kit.config import ExperimentConfig, UsageError
from passion_kit.engine.runs import load_checkpoint
from passion_kit.engine.train import fit
from passion_kit.io import NoSpaceError, atomic_torch_save, remove_stale_temps
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(phantom_root, tmp_path_factory):
    """One finished tiny run (1 epoch) on a private copy of the phantom."""
    base = tmp_path_factory.mktemp("bad_inputs")
    root = base / "phantom"
    shutil.copytree(phantom_root, root)
    run = fit(tiny_config(root, base / "runs", "train.epochs=1", "objective.name=baseline"))
    return root, run


def test_a_truncated_prepared_array_names_the_file(trained, tmp_path):
    from passion_kit.data.prepared import read_case

    root, _ = trained
    copy = tmp_path / "phantom"
    shutil.copytree(root, copy)
    case = sorted((copy / "cases").iterdir())[0]
    image = case / "image.npy"
    image.write_bytes(image.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{image}: not a readable \.npy array.*prepare"):
        read_case(copy, case.name, mmap=True)


def test_a_binary_split_file_case_list_or_dataset_json_names_the_file(trained, tmp_path):
    from passion_kit.data import load_description
    from passion_kit.data.prepared import read_case_ids
    from passion_kit.data.splits import read_split

    root, _ = trained
    binary = tmp_path / "split.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    description = load_description(root)
    with pytest.raises(ValueError, match=rf"{binary}: not a text file \(a split CSV expected\)"):
        read_split(binary, description.modalities)
    with pytest.raises(ValueError, match=rf"{binary}: not a text file \(a case list expected\)"):
        read_case_ids(binary)
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "dataset.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="dataset.json: not a text file"):
        load_description(folder)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("train:\n  lr: 0.1\n  epochs: [1, 2\n")
    with pytest.raises(ValueError, match=rf"{bad}: not valid YAML at line \d+, column \d+"):
        ExperimentConfig.from_file(bad)


def test_an_msd_json_without_a_key_names_the_file_and_the_key(tmp_path):
    from passion_kit.data.msd import find_msd_cases

    task = tmp_path / "Task01_BrainTumour"
    task.mkdir()
    (task / "dataset.json").write_text(json.dumps({"name": "BRATS", "training": []}))
    with pytest.raises(ValueError, match=r"dataset.json: an MSD dataset.json needs .*description"):
        find_msd_cases(tmp_path)


def test_a_checkpoint_without_config_names_what_is_missing(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {}, "backbone": "rfnet", "num_modalities": 4, "num_classes": 4}, path)
    with pytest.raises(
        ValueError, match=rf"{path} is not a complete passion-kit checkpoint: no config"
    ):
        load_checkpoint(path)


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_last.pt"
    atomic_torch_save({"epoch": 1}, target)

    def full(obj, f):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:  # torch wraps the OSError as its RuntimeError does
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from exc

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(NoSpaceError, match=rf"{target}: no space left on device"):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no .tmp- left


def test_too_little_free_space_is_refused_before_training(trained, tmp_path, monkeypatch):
    import passion_kit.io as kit_io

    root, _ = trained
    monkeypatch.setattr(
        kit_io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000)
    )
    cfg = tiny_config(root, tmp_path / "runs", "train.epochs=1")
    with pytest.raises(NoSpaceError, match=r"MiB free, a checkpoint of this run needs about"):
        fit(cfg)
    assert not list((tmp_path / "runs").rglob("checkpoint*"))


def test_orphan_temporary_files_are_removed_at_the_next_start(trained, tmp_path):
    root, _ = trained
    cfg = tiny_config(root, tmp_path / "runs", "train.epochs=1")
    run = tmp_path / "runs" / cfg.run_name()
    run.mkdir(parents=True)
    orphan = run / ".tmp-abc123"
    orphan.write_bytes(b"half a checkpoint")
    keep = run / "notes.txt"
    keep.write_text("mine")
    assert remove_stale_temps(tmp_path) == []  # not recursive, nothing at the top
    fit(cfg)
    assert not orphan.exists() and keep.read_text() == "mine"


def test_each_epoch_leaves_one_line(trained, tmp_path, capsys):
    root, _ = trained
    fit(tiny_config(root, tmp_path / "runs", "train.epochs=2", "objective.name=passion"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "loss " in lines[0] and "fuse " in lines[0] and " s" in lines[0]
    assert "beta " in lines[1]  # PASSION moves beta after the first epoch


def test_evaluate_refuses_a_read_only_run_before_computing(trained, tmp_path, monkeypatch):
    import passion_kit.engine.evaluate as ev

    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.setattr(ev, "check_writable", _refuse)
    monkeypatch.setattr(ev, "evaluate_cases", _never)
    with pytest.raises(PermissionError, match="cannot write the evaluation tables"):
        ev.evaluate_run(copy, data_root=root, device="cpu", progress=False)


def _refuse(folder, what):
    raise PermissionError(f"{folder}: cannot write {what} there (Read-only file system)")


def _never(*args, **kwargs):
    raise AssertionError("computed before checking that the results can be written")


def test_check_writable_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    import tempfile

    from passion_kit.io import check_writable

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match=rf"{tmp_path}: cannot write the tables there"):
        check_writable(tmp_path, "the tables")


def test_a_checkpoint_of_another_run_is_not_filed_under_this_one(trained, tmp_path):
    from passion_kit.engine.evaluate import evaluate_run

    root, run = trained
    other = tmp_path / "other"
    shutil.copytree(run, other)
    cfg = ExperimentConfig.from_file(other / "config.json").override(["train.seed=7"])
    (other / "config.json").write_text(cfg.to_json())
    with pytest.raises(ValueError, match=r"belongs to another run than .*train.seed"):
        evaluate_run(other, checkpoint=run / "checkpoint_last.pt", data_root=root, device="cpu")
    assert not (other / "eval").exists()


def test_cli_errors_are_one_line_with_status_2_for_arguments_and_1_for_data(tmp_path, capsys):
    assert main(["train", "train.lr=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: override: train.lr must be a finite number > 0, got -1.0"]
    assert main(["train", "model.nope=1"]) == 2
    assert main(["evaluate", str(tmp_path / "missing_run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith("error: ") and "checkpoint" in err[-1]
    with pytest.raises(UsageError):
        ExperimentConfig().override(["train.epochs"])


def test_bad_arrays_are_refused_without_pickle(tmp_path):
    from passion_kit.data.prepared import load_array

    path = tmp_path / "image.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=rf"{path}: not a readable \.npy array"):
        load_array(path, None)


def test_a_split_with_rows_for_cases_not_prepared_warns_naming_them(trained, tmp_path):
    from passion_kit.data import PreparedDataset
    from passion_kit.data.dataset import load_split

    root, _ = trained
    split = load_split(root, "mr2468")
    extra = tmp_path / "extra.csv"
    text = (root / "splits" / "missing_rates" / "mr2468.csv").read_text().splitlines()
    header, first = text[0], text[1]
    extra.write_text(
        "\n".join([header, *text[1:], first.replace(split.case_ids[0], "ghost_001", 1)]) + "\n"
    )
    with pytest.warns(
        UserWarning, match=r"extra.csv has rows for 1 case\(s\) that .* does not hold.*ghost_001"
    ):
        PreparedDataset(root, "train", setting="idt", missing_rates=extra)


def test_evaluation_refuses_a_case_with_nan_or_foreign_labels(trained, tmp_path):
    from passion_kit.data import PreparedDataset
    from passion_kit.engine.evaluate import evaluate_cases, load_run

    root, run = trained
    copy = tmp_path / "phantom"
    shutil.copytree(root, copy)
    loaded = load_run(run, data_root=copy, device="cpu")
    dataset = PreparedDataset(copy, "test", setting="full")
    case = dataset.case_ids[0]
    label = copy / "cases" / case / "label.npy"
    np.save(label, np.full(np.load(label).shape, 7, np.uint8))
    with pytest.raises(ValueError, match=rf"case {case} .*label values \[.*7\] outside .* 0\.\.3"):
        evaluate_cases(loaded.backbone, dataset, window=(16,) * 3, progress=False)
    image = copy / "cases" / case / "image.npy"
    array = np.load(image)
    array[0, 0, 0, 0] = np.nan
    np.save(image, array)
    np.save(label, np.zeros(array.shape[1:], np.uint8))
    with pytest.raises(ValueError, match=rf"case {case} of .*: image contains NaN"):
        evaluate_cases(loaded.backbone, dataset, window=(16,) * 3, progress=False)


@pytest.mark.parametrize("case_id", ["../../etc", "a/b", "..", ""])
def test_a_case_id_cannot_leave_the_cases_folder(tmp_path, case_id):
    from passion_kit.data.prepared import case_dir

    with pytest.raises(ValueError, match="must be a plain folder name"):
        case_dir(tmp_path, case_id)


def test_evaluating_on_another_dataset_is_refused_and_a_moved_one_accepted(trained, tmp_path):
    from passion_kit.data.phantom import make_phantom
    from passion_kit.engine.evaluate import evaluate_run

    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    other = tmp_path / "other_phantom"
    make_phantom(other, num_cases=10, size=48, seed=3, progress=False)
    with pytest.raises(ValueError, match=r"other_phantom is another dataset than the run's"):
        evaluate_run(copy, data_root=other, device="cpu", progress=False)
    assert not (copy / "eval").exists()
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    paths = evaluate_run(copy, data_root=moved, device="cpu", progress=False, max_cases=1)
    assert paths["summary"].is_file()

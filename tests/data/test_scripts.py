"""The thin command-line scripts in data_scripts/, called in-process through main(argv)."""

from __future__ import annotations

import shutil

import pytest
from data_helpers import load_script

from passion_kit.data.description import BRATS2020
from passion_kit.data.splits import read_split, shipped

SCRIPTS = (
    "make_missing_rate_split",
    "validate_split",
    "make_phantom",
    "make_brats_like",
    "prepare_brats2020",
    "prepare_msd",
    "prepare_myops2020",
)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script(name).main(["--help"])
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out


@pytest.fixture
def train_txt(tmp_path):
    return shutil.copy(shipped("brats2020/train.txt"), tmp_path / "train.txt")


def test_named_rates_write_the_official_mr2468(train_txt, tmp_path, capsys):
    make = load_script("make_missing_rate_split").main
    out = tmp_path / "split.csv"
    argv = ["--cases", str(train_txt), "--missing-rates", "flair=0.6,t1c=0.4,t1=0.2,t2=0.8"]
    assert make([*argv, "--seed", "1037", "--out", str(out)]) == 0
    published = read_split(
        shipped("brats2020/Brats2020_imb_split_mr2468.csv"), BRATS2020.modalities
    )
    assert read_split(out, BRATS2020.modalities) == published
    assert "flair          90" in capsys.readouterr().out
    before = out.read_bytes()
    assert make([*argv, "--out", str(out)]) == 2  # refuses to touch an existing file
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    official = tmp_path / "official.csv"
    assert make(["--cases", str(train_txt), "--rates", "mr2468", "--format", "official",
                 "--out", str(official)]) == 0  # fmt: skip
    assert official.read_bytes() == shipped("brats2020/Brats2020_imb_split_mr2468.csv").read_bytes()
    assert make([*argv[:3], "flair=0.6", "--out", str(tmp_path / "x.csv")]) == 2


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--description", "{tmp}/list.json"], "not a list"),
        (["--description", "{tmp}/none.json"], "none.json"),
        (["--out", "{tmp}/folder"], "is a folder"),
        (["--out", "{tmp}/file.txt/x.csv"], "file.txt/x.csv"),
    ],
)
def test_a_bad_description_or_out_is_one_error_line(train_txt, tmp_path, capsys, extra, named):
    make = load_script("make_missing_rate_split").main
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("a file where a folder is needed")
    argv = ["--cases", str(train_txt), "--rates", "mr2468", "--out", str(tmp_path / "s.csv")]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert make([*argv, *(a.format(tmp=tmp_path) for a in extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_validate_split(train_txt, tmp_path, capsys):
    validate = load_script("validate_split").main
    published = str(shipped("brats2020/Brats2020_imb_split_mr2468.csv"))
    assert validate([published, "--cases", str(train_txt), "--reference", published]) == 0
    assert "same mask for every case" in capsys.readouterr().out
    other = str(shipped("brats2020/Brats2020_imb_split_mr1379.csv"))
    assert validate([published, "--reference", other]) == 1
    assert "differ" in capsys.readouterr().err
    lines = shipped("brats2020/Brats2020_imb_split_mr2468.csv").read_text().splitlines()
    name, mask_id, rest = lines[5].split(",", 2)
    lines[5] = f"{name},{(int(mask_id) + 1) % 15},{rest}"  # mask_id no longer fits the mask
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines))
    assert validate([str(bad)]) == 1
    assert "line 6" in capsys.readouterr().err


def test_make_phantom_report(tmp_path, capsys):
    out = tmp_path / "ph"
    code = load_script("make_phantom").main(
        ["--out", str(out), "--cases", "4", "--size", "64", "--report", "--quiet"]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "speed: 4 cases of 64^3" in text and "design targets: all met" in text
    assert "modality" in text and "t1c" in text
    again = ["--out", str(out), "--cases", "4", "--size", "64", "--quiet"]
    assert load_script("make_phantom").main(again) == 0
    assert "0 new case(s), 4 already there" in capsys.readouterr().out
    # the default size is another phantom: one error line, exit status 1
    assert load_script("make_phantom").main(["--out", str(out), "--cases", "4", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not phantom {'size': 32" in err[0]


def test_prepare_brats_script(make_brats_official, tmp_path, capsys):
    main = load_script("prepare_brats2020").main
    raw = make_brats_official((1,))
    assert main(["--raw", str(raw), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert "prepared 1 new case" in capsys.readouterr().out
    assert main(["--raw", str(tmp_path / "none"), "--out", str(tmp_path / "p"), "--quiet"]) == 1
    assert "not found" in capsys.readouterr().err


def test_prepare_brats_script_reads_the_2023_layout_into_its_own_folder(
    tmp_path, monkeypatch, capsys
):
    raw = tmp_path / "raw"
    make = ["--cases", "1", "--out", str(raw), "--size", "48,48,31", "--layout", "brats2023"]
    assert load_script("make_brats_like").main(make) == 0
    monkeypatch.setenv("PASSION_KIT_DATA", str(tmp_path / "data"))
    main = load_script("prepare_brats2020").main
    assert main(["--raw", str(raw), "--quiet"]) == 0  # detected; default <data root>/brats2023
    assert "brats2023: prepared 1 new case" in capsys.readouterr().out
    assert (tmp_path / "data" / "brats2023" / "cases" / "BraTS-GLI-00000-000").is_dir()
    assert main(["--raw", str(raw), "--layout", "brats2020", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz" in err[0]
    assert main(["--raw", str(raw), "--out", str(tmp_path / "o"), "--layout", "brats2020"]) == 1
    assert "no BraTS case folder found" in capsys.readouterr().err


def test_prepare_msd_and_myops_scripts_report_missing_inputs(tmp_path, capsys):
    msd = load_script("prepare_msd").main
    assert msd(["--root", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "download" in capsys.readouterr().err
    myops = load_script("prepare_myops2020").main
    assert myops(["--raw", str(tmp_path), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    assert "no MyoPS training file" in capsys.readouterr().err

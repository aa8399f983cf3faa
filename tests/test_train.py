"""Training on a tiny phantom: runs, history files, exact resume, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from passion_kit.engine.runs import RunFiles, load_checkpoint
from passion_kit.engine.runtime import select_device
from passion_kit.engine.train import fit, poly_lr
from passion_kit.models import available_backbones
from tests.conftest import tiny_config


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_is_complete_only_with_its_checkpoint_and_a_complete_meta(tmp_path):
    files = RunFiles(tmp_path / "run")
    assert not files.complete()  # no folder
    files.root.mkdir()
    files.meta.write_text(json.dumps({"status": "complete"}))
    assert not files.complete()  # no checkpoint
    files.last.write_bytes(b"")
    assert files.complete()
    files.meta.write_text(json.dumps({"status": "in progress"}))
    assert not files.complete()


@pytest.mark.parametrize("backbone", available_backbones())
@pytest.mark.parametrize("objective", ["baseline", "passion"])
def test_fit_writes_a_complete_run(phantom_root, tmp_path, backbone, objective):
    cfg = tiny_config(phantom_root, tmp_path, f"objective.name={objective}", backbone=backbone)
    run = fit(cfg)
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "meta.json",
        "checkpoint_last.pt",
        "checkpoint_epoch2.pt",
        "history_epoch.csv",
        "history_modality.csv",
    }
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["epochs_completed"] == 2
    assert RunFiles(run).complete()
    epochs = _rows(run / "history_epoch.csv")
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    lr = cfg.train.lr
    assert float(epochs[0]["lr"]) == pytest.approx(lr) and float(epochs[1]["lr"]) < lr
    for row in epochs:
        assert math.isfinite(float(row["loss"])) and float(row["fuse"]) > 0
    modality = _rows(run / "history_modality.csv")
    assert [(int(r["epoch"]), r["modality"]) for r in modality[:4]] == [
        (0, "flair"),
        (0, "t1c"),
        (0, "t1"),
        (0, "t2"),
    ]
    assert len(modality) == 8
    for epoch in (0, 1):
        rows = [r for r in modality if int(r["epoch"]) == epoch]
        betas = [float(r["beta"]) for r in rows]
        assert math.sqrt(sum(b * b for b in betas)) == pytest.approx(2.0, rel=1e-5)
        for r in rows:
            assert 0.0 <= float(r["gate_rate"]) <= 1.0
            assert float(r["distance"]) >= 0
    moved = [float(r["beta"]) != 1.0 for r in modality]
    assert any(moved) == (objective == "passion")  # the baseline never updates beta
    if objective == "baseline":  # it measures distances for the plots all the same
        assert any(float(r["distance"]) > 0 for r in modality)


@pytest.mark.parametrize("backbone", available_backbones())
@pytest.mark.parametrize("objective", ["ogm_ge", "pmr", "redcore"])
def test_balancing_objectives_train_on_the_phantom(phantom_root, tmp_path, backbone, objective):
    """A few steps of each balancing objective with each backbone, through the trainer."""
    cfg = tiny_config(
        phantom_root,
        tmp_path,
        f"objective.name={objective}",
        "train.iterations_per_epoch=3",
        backbone=backbone,
    )
    run = fit(cfg)
    epochs = _rows(run / "history_epoch.csv")
    assert len(epochs) == 2 and all(math.isfinite(float(r["loss"])) for r in epochs)
    modality = _rows(run / "history_modality.csv")
    assert len(modality) == 8
    coefficients = [float(r["coefficient"]) for r in modality]  # NaN: modality not seen
    seen = [c for c in coefficients if not math.isnan(c)]
    assert seen and all(0 < c <= 4 for c in seen)
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert state["objective"]["epoch"] == 2 and state["objective"]["steps"] == 6


@pytest.mark.parametrize("objective", ["passion", "ogm_ge"])  # ogm_ge: its seeded noise
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(phantom_root, tmp_path, objective):
    straight = fit(tiny_config(phantom_root, tmp_path / "a", f"objective.name={objective}"))
    cfg = tiny_config(phantom_root, tmp_path / "b", f"objective.name={objective}")
    first = fit(cfg, stop_after=1)
    meta = json.loads((first / "meta.json").read_text())
    assert meta["status"] == "in progress" and meta["epochs_completed"] == 1
    assert not (first / "checkpoint_epoch2.pt").exists()
    resumed = fit(cfg)
    a = load_checkpoint(straight / "checkpoint_last.pt")
    b = load_checkpoint(resumed / "checkpoint_last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    if objective == "passion":
        assert a["objective"]["beta"].tolist() == b["objective"]["beta"].tolist()
    else:
        assert a["objective"]["steps"] == b["objective"]["steps"] > 0
    assert a["history"]["epoch"][1]["loss"] == b["history"]["epoch"][1]["loss"]
    assert len(_rows(resumed / "history_modality.csv")) == 8  # no duplicated rows


def test_resuming_with_another_config_is_refused(phantom_root, tmp_path):
    cfg = tiny_config(phantom_root, tmp_path, "train.name=run")
    fit(cfg, stop_after=1)
    changed = tiny_config(phantom_root, tmp_path, "train.name=run", "train.lr=0.1")
    with pytest.raises(ValueError, match="train.lr"):
        fit(changed)


def test_checkpoint_of_another_backbone_is_refused(phantom_root, tmp_path):
    cfg = tiny_config(phantom_root, tmp_path, "train.name=run")
    run = fit(cfg, stop_after=1)
    state = load_checkpoint(run / "checkpoint_last.pt")
    state["num_modalities"] = 3
    torch.save(state, run / "checkpoint_last.pt")
    with pytest.raises(ValueError, match="3 modalities"):
        fit(cfg)


def test_bad_inputs_fail_early_with_clear_messages(phantom_root, tmp_path):
    with pytest.raises(ValueError, match="train.epochs"):
        fit(tiny_config(phantom_root, tmp_path, "train.epochs=0"))
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        fit(tiny_config(tmp_path / "nowhere", tmp_path, "data.phantom_cases=0"))
    with (
        pytest.raises(ValueError, match="no CUDA GPU")
        if not torch.cuda.is_available()
        else (pytest.raises(ValueError, match="only"))
    ):
        select_device("cuda" if not torch.cuda.is_available() else "cuda:99")
    with pytest.raises(ValueError, match="not a readable"):
        bad = tmp_path / "bad.pt"
        bad.write_text("not a checkpoint")
        load_checkpoint(bad)
    assert not any((tmp_path / "nowhere").glob("*"))
    # a phantom of another recipe is never used silently (e.g. a smoke run's small one)
    with pytest.raises(ValueError, match=r"holds a phantom of 10 cases of 32\^3.*24 cases of 48"):
        fit(tiny_config(phantom_root, tmp_path, "data.phantom_cases=24", "data.phantom_size=48"))


def test_a_phantom_of_an_earlier_design_is_refused(tmp_path):
    from passion_kit.data.phantom import DESIGN, make_phantom

    root = tmp_path / "phantom"
    make_phantom(root, num_cases=3, size=16, progress=False)
    description = json.loads((root / "dataset.json").read_text())
    assert description["extra"]["design"] == DESIGN
    del description["extra"]["design"]  # as the kit's first design wrote it
    (root / "dataset.json").write_text(json.dumps(description))
    cfg = tiny_config(root, tmp_path, "data.phantom_cases=3", "data.phantom_size=16")
    with pytest.raises(ValueError, match=rf"design 1, .*generates design {DESIGN}: delete"):
        fit(cfg)
    assert not (tmp_path / cfg.run_name()).exists()


def test_poly_schedule_matches_the_official_values():
    assert poly_lr(2e-4, 0, 300) == 2e-4
    assert poly_lr(2e-4, 100, 300) == pytest.approx(1.3885e-4, abs=1e-9)
    assert poly_lr(2e-4, 200, 300) == pytest.approx(7.441e-5, abs=1e-9)
    assert poly_lr(2e-4, 299, 300) == pytest.approx(1.18e-6, abs=1e-8)


def test_amp_fast_uses_bf16_only_on_a_cpu_with_bf16_units(monkeypatch):
    import passion_kit.engine.runtime as train
    from passion_kit.config import ExperimentConfig

    cfg = ExperimentConfig.preset("cpu")
    assert cfg.train.amp == "fast"
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.amp_dtype(cfg.train.amp, cpu) == torch.bfloat16
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.amp_dtype(cfg.train.amp, cpu) is None  # emulated bf16 can be slower than fp32
    assert train.amp_dtype("auto", cpu) is None
    with pytest.raises(ValueError, match="train.amp must be auto, fast, off"):
        train.amp_dtype("fp8", cpu)


def test_the_paper_presets_train_and_evaluate_in_fp32_as_the_official_code():
    import passion_kit.engine.runtime as train
    from passion_kit.config import PRESETS, ExperimentConfig

    for name in PRESETS:
        cfg = ExperimentConfig.preset(name)
        if name.endswith("-paper"):
            assert (cfg.train.amp, cfg.eval.amp) == ("off", "off"), name
            assert train.amp_dtype(cfg.train.amp, torch.device("cuda")) is None
    assert ExperimentConfig.preset("cpu").eval.amp == "fast"


def test_cpu_bf16_detection_reads_the_cpu_flags_and_the_kernel_caps(monkeypatch, tmp_path):
    import passion_kit.engine.runtime as env

    real_read = env.Path.read_text
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    for flags, expected in [("fpu avx512f avx512_bf16", True), ("fpu avx2", False)]:
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor : 0\nmodel name : Test CPU\nflags\t\t: {flags}\n")
        monkeypatch.setattr(
            env.Path,
            "read_text",
            lambda self, *a, info=info, **k: real_read(
                info if str(self) == "/proc/cpuinfo" else self
            ),
        )
        assert env.cpu_has_native_bf16() is expected
        assert env.cpu_summary().startswith("Test CPU: ")
    # with bf16 units, kernels capped below them (an ordinary CPU emulated) count as none
    assert env.cpu_has_native_bf16() is False  # the last flags: avx2 only
    info.write_text("flags : avx2 avx512f avx512_bf16\n")
    assert env.cpu_has_native_bf16() is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert env.cpu_has_native_bf16() is False
    assert "oneDNN up to AVX2 (emulating an ordinary CPU)" in env.cpu_summary()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert env.cpu_has_native_bf16() is True
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert env.cpu_has_native_bf16() is False
    assert env.cpu_summary(torch.bfloat16).endswith(
        f"bfloat16 autocast, {torch.get_num_threads()} thread(s)"
    )


class _Payload:
    """Pickles as a call to ``Path.touch(marker)``: loading it would create the file."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code_ran"
    bad = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {}, "backbone": "rfnet", "extra": _Payload(marker)}, bad)
    with pytest.raises(ValueError, match="more than tensors, numbers, strings"):
        load_checkpoint(bad)
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_a_run_from_an_earlier_kit_resumes_when_a_new_key_has_its_default():
    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.train import _config_differences

    cfg = ExperimentConfig.preset("cpu").to_dict()
    older = json.loads(json.dumps(cfg))
    del older["objective"]["keep_self_students"], older["data"]["image_fill"]
    del older["eval"]["amp"]  # (evaluation settings never block a resumption)
    assert _config_differences(older, cfg) == []
    older["objective"]["temperature"] = 2.0
    assert _config_differences(older, cfg) == ["objective.temperature"]


def test_the_image_fill_key_reaches_the_augmentation(phantom_root, tmp_path, monkeypatch):
    import passion_kit.engine.train as train

    seen = {}
    real = train.augment_for

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "augment_for", spy)
    fit(tiny_config(phantom_root, tmp_path, "train.epochs=1", "data.image_fill=-1"))
    assert seen["image_fill"] == -1.0

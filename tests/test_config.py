from __future__ import annotations

import json

import pytest

from passion_kit.config import PRESETS, ExperimentConfig


def test_defaults_are_the_paper_settings():
    cfg = ExperimentConfig()
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (
        2e-4,
        300,
        1,
        1037,
    )
    assert cfg.data.patch_size == [80, 80, 80] and cfg.data.missing_rates == "mr2468"
    assert (cfg.objective.temperature, cfg.objective.weight_pixel, cfg.objective.weight_proto) == (
        4.0,
        0.5,
        0.1,
    )
    assert cfg.model.backbone == "mmformer" and cfg.model.width == 8


def test_presets_and_overrides():
    for name in PRESETS:
        ExperimentConfig.preset(name)
    cfg = ExperimentConfig.preset("cpu").override(["data.patch_size=48", "train.lr=1e-3"])
    assert cfg.data.patch_size == [48, 48, 48] and cfg.train.lr == 1e-3
    assert cfg.run_name() == "phantom_rfnet_passion_idt_s1037"


def test_from_file_with_a_preset(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "cpu", "train": {"epochs": 7}}))
    cfg = ExperimentConfig.from_file(path, ["train.seed=3"])
    assert (cfg.train.epochs, cfg.train.seed, cfg.data.dataset) == (7, 3, "phantom")
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("model:\n  backbone: rfnet\n")
    assert ExperimentConfig.from_file(yaml_path).model.backbone == "rfnet"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=2", "unknown key 'train.epoch'"),
        ("training.epochs=2", "unknown key 'training.epochs'"),
        ("train.epochs=two", "train.epochs must be int"),
        ("train.deterministic=1", "train.deterministic must be bool"),
        ("model.width=8.5", "model.width must be int"),
        ("epochs", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig().override([override])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="cannot read config file"):
        ExperimentConfig.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"epochs": "many"}}))
    with pytest.raises(ValueError, match="bad.json: train.epochs must be int"):
        ExperimentConfig.from_file(bad)

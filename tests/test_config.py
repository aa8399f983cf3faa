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
        ("train.lr=Infinity", r"train.lr must be a finite number > 0, got inf"),
        ("train.lr=0", r"train.lr must be a finite number > 0"),
        ("train.poly_power=NaN", r"train.poly_power must be a finite number >= 0, got nan"),
        ("eval.overlap=1.5", r"eval.overlap must be a number in \[0, 1\), got 1.5"),
        ("objective.temperature=NaN", "objective.temperature must be a finite number > 0"),
        ("objective.eta_epochs=-3", "objective.eta_epochs must be an integer >= 0"),
        ("train.epochs=0", "train.epochs must be an integer >= 1"),
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


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "a\\b"])
def test_a_run_name_is_a_folder_name_not_a_path(name):
    with pytest.raises(ValueError, match="train.name must be '' or a folder name"):
        ExperimentConfig.preset("cpu").override([f"train.name={name}"])  # refused at parse


def test_the_command_line_says_a_user_error_in_one_line(tmp_path, capsys):
    from passion_kit.__main__ import main

    assert main(["evaluate", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checkpoint_last.pt" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["train", "train.lr=Infinity"]) == 2  # a bad argument, as argparse's
    assert "train.lr must be a finite number > 0" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):  # --debug: the exception and its traceback
        main(["--debug", "evaluate", str(tmp_path / "nowhere")])


def test_the_official_presets_are_the_paper_presets_with_the_official_switches():
    from passion_kit.config import OFFICIAL_SWITCHES
    from passion_kit.engine.train import build_objective_from
    from passion_kit.method.baseline import Deviations

    for name in ("brats2020", "myops2020"):
        paper = ExperimentConfig.preset(f"{name}-paper").to_dict()
        official = ExperimentConfig.preset(f"{name}-official").to_dict()
        changed = {
            (section, key)
            for section in paper
            for key in paper[section]
            if paper[section][key] != official[section][key]
        }
        switches = {
            (section, key) for section, values in OFFICIAL_SWITCHES.items() for key in values
        }
        assert changed <= switches and len(changed) >= len(switches) - 1  # amp is already off
    cfg = ExperimentConfig.preset("brats2020-official")
    by_setting = {}
    for setting in ("idt", "idt_drop", "pdt"):
        objective = build_objective_from(cfg.override([f"data.setting={setting}"]), 4, 4)
        d = objective.deviations
        assert d == Deviations.official(setting)
        assert d.reduction == "sum" and d.skip_degenerate is False
        assert d.keep_self_students and d.warmup_decay
        by_setting[setting] = (d.students, objective.state.distance_mean)
    assert by_setting == {
        "idt": ("available", "modality"),
        "idt_drop": ("available", "iteration"),
        "pdt": ("all", "iteration"),
    }


def test_choice_keys_name_the_key_and_the_choices():
    cfg = ExperimentConfig.preset("cpu")
    assert cfg.override(["data.image_fill=-1"]).data.image_fill == -1.0
    assert cfg.override(["data.image_fill=background"]).data.image_fill == "background"
    for item, words in [
        ("data.image_fill=grey", "data.image_fill must be 'background' or a finite number"),
        ("objective.students=some", "objective.students must be available, all or official"),
        ("objective.epoch_distance=x", "objective.epoch_distance must be modality, iteration"),
        ("eval.amp=fp8", "eval.amp must be auto, fast, off, bf16 or fp16"),
        ("eval.hd95=mean", "eval.hd95 must be official, brats or monai"),
    ]:
        with pytest.raises(ValueError, match=words):
            ExperimentConfig.preset("cpu").override([item])


def test_build_named_refuses_an_unknown_name_or_keyword_and_follows_kwargs_up_the_bases():
    from passion_kit.config import build_named

    class Base:
        def __init__(self, *, a=1, b=2):
            self.a, self.b = a, b

    class Child(Base):
        def __init__(self, *, c=3, **rest):
            super().__init__(**rest)
            self.c = c

    def function(x, *, y=0):
        return x + y

    registry = {"child": Child, "function": function}
    assert build_named(registry, "Child", "thing", "x.options", a=5, c=6).a == 5
    assert build_named(registry, "function", "thing", "x.options", x=1, y=2) == 3
    with pytest.raises(ValueError, match=r"x.options: the child thing takes no option 'z'; it"):
        build_named(registry, "child", "thing", "x.options", z=1)
    with pytest.raises(ValueError, match=r"x.options: the function thing takes no option 'z'"):
        build_named(registry, "function", "thing", "x.options", x=1, z=1)
    with pytest.raises(ValueError, match=r"unknown thing 'nope'; expected one of \['child'"):
        build_named(registry, "nope", "thing", "x.options")

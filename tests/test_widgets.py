"""The missing-modality explorer, driven in the kernel as a user's clicks would drive it."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from passion_kit.config import ExperimentConfig
from passion_kit.engine.evaluate import case_metrics, predict_case
from passion_kit.engine.runtime import amp_dtype
from passion_kit.lessons import explorer as widgets
from passion_kit.lessons.explorer import (
    CachedCase,
    MissingModalityExplorer,
    explorer_command,
    explorer_config,
    explorer_run,
)


def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The explorer's smoke checkpoint (8 phantom cases of 48^3, 4 iterations), trained once
    per session: later calls find the finished run and only reload it."""
    base = tmp_path_factory.getbasetemp() / "explorer"
    return explorer_run(base / "data", base / "runs", smoke=True, device="cpu")


@pytest.fixture(scope="module")
def explorer(tmp_path_factory) -> MissingModalityExplorer:
    return MissingModalityExplorer(smoke_run(tmp_path_factory), device="cpu")


@pytest.fixture
def all_on(explorer):
    explorer.set_modalities(explorer.names)
    return explorer


def test_the_documented_command_makes_the_same_run(tmp_path):
    command = explorer_command(tmp_path / "data", tmp_path / "runs", smoke=True)
    assert command.startswith("python -m passion_kit train --preset cpu ")
    overrides = shlex.split(command)[6:]
    from_command = ExperimentConfig.preset("cpu").override(
        overrides + ["train.device=cpu", "train.progress=false"]
    )
    ours = explorer_config(tmp_path / "data", tmp_path / "runs", smoke=True, device="cpu")
    assert from_command.to_dict() == ours.to_dict()
    assert ours.data.phantom_size == 48  # the notebooks' default case size
    assert explorer_config(tmp_path).train.name != ours.train.name  # never resumed into
    documented = widgets.__doc__.split("from scratch (:func:`explorer_command`)::")[1]
    assert documented.split("\n\n")[1].split() == shlex.split(
        "python -m passion_kit explorer-checkpoint --out passion_kit/resources/explorer"
    )
    trains = documented.split("which trains ``")[1].split("``")[0]
    full = shlex.split(explorer_command("data", "runs"))
    assert set(shlex.split(trains)) <= set(full)
    assert ExperimentConfig.preset("cpu").override(full[6:]).run_name() == "explorer"


def test_the_shipped_checkpoint_is_the_documented_run_and_loads_safely():
    from passion_kit.config import PLACE_KEYS, ExperimentConfig
    from passion_kit.engine.runs import load_checkpoint
    from passion_kit.lessons.explorer import SHIPPED_EXPLORER

    files = sorted(p.name for p in SHIPPED_EXPLORER.iterdir() if p.is_file())
    assert set(widgets._PACKED) <= set(files)
    assert sum((SHIPPED_EXPLORER / f).stat().st_size for f in files) <= 10 * 2**20
    state = load_checkpoint(SHIPPED_EXPLORER / "checkpoint.pt")  # weights_only=True
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    shipped = json.loads((SHIPPED_EXPLORER / "config.json").read_text())
    assert shipped == state["config"]
    # a key added since it was made counts as its default, which is what that kit did
    shipped = ExperimentConfig.from_dict(shipped, source="shipped").to_dict()
    expected = explorer_config("data", "runs").to_dict()  # the command's config today
    for section, key in PLACE_KEYS:
        del expected[section][key]
        shipped[section].pop(key, None)
    assert shipped == expected, "the shipped checkpoint no longer matches its command"
    assert state["epoch"] == expected["train"]["epochs"]
    history = (SHIPPED_EXPLORER / "history_epoch.csv").read_text().splitlines()
    assert len(history) == 1 + expected["train"]["epochs"]


def test_the_shipped_checkpoint_opens_in_seconds_and_is_trained(tmp_path):
    started = time.perf_counter()
    run = explorer_run(tmp_path / "data", tmp_path / "runs", device="cpu")
    explorer = MissingModalityExplorer(run, device="cpu")
    opened = time.perf_counter() - started
    assert run.name == "explorer_shipped" and not (tmp_path / "runs" / "explorer").exists()
    assert min(explorer.dice.values()) >= 0.7, explorer.dice  # a trained model
    again = time.perf_counter()
    assert explorer_run(tmp_path / "data", tmp_path / "runs", device="cpu") == run
    print(
        f"\n[explorer] shipped checkpoint: opened in {opened:.1f} s (phantom generated), "
        f"again in {time.perf_counter() - again:.1f} s; Dice all modalities {explorer.dice}"
    )


def test_a_toggle_changes_prediction_dice_and_what_is_shown(all_on):
    explorer = all_on
    prediction, dice = explorer.prediction.copy(), explorer.dice
    shown, image = explorer.dice_html.value, explorer.image.value
    assert "all modalities" in shown and image[:8] == b"\x89PNG\r\n\x1a\n"

    explorer.checkboxes["flair"].value = False  # what a click does
    assert explorer.modalities == ("t1c", "t1", "t2")
    assert not np.array_equal(explorer.prediction, prediction)
    assert explorer.dice != dice
    assert "t1c+t1+t2" in explorer.dice_html.value and explorer.dice_html.value != shown
    assert explorer.image.value != image
    assert explorer.message == ""
    for region, value in explorer.dice.items():  # the shown numbers are the subset's
        assert f"<b>{region}</b> {value:.3f}" in explorer.dice_html.value


def test_predictions_and_dice_equal_the_evaluation(all_on):
    explorer = all_on
    cfg = ExperimentConfig.from_file(explorer.run_dir / "config.json")
    masks = torch.tensor([[True, True, True, True], [False, True, False, True]])
    amp = amp_dtype(cfg.eval.amp, torch.device("cpu"), "eval.amp")  # as evaluate_run
    assert widgets.AMP[explorer.amp] == amp
    expected = [
        predict_case(
            explorer.backbone,
            explorer.cached.image,
            mask[None],
            window=cfg.eval.window,
            overlap=cfg.eval.overlap,
            amp=amp,
        )[0].numpy()
        for mask in masks
    ]
    for mask, labels in zip(masks.tolist(), expected, strict=True):
        explorer.set_modalities([n for n, m in zip(explorer.names, mask, strict=True) if m])
        assert np.array_equal(explorer.prediction, labels)
        metrics = case_metrics(labels, explorer.label, explorer.regions)
        assert explorer.dice == pytest.approx({r: metrics[f"dice_{r}"] for r in explorer.regions})


def test_unchecking_every_modality_is_refused_with_a_message(all_on):
    explorer = all_on
    for name in explorer.names:
        explorer.checkboxes[name].value = False  # no exception on the last one
    assert explorer.modalities == explorer.names[-1:]  # the last click was undone
    assert "At least one modality" in explorer.message
    assert "At least one modality" in explorer.message_html.value
    assert explorer.set_modalities([]) is False and explorer.modalities == explorer.names[-1:]
    explorer.checkboxes[explorer.names[0]].value = True
    assert explorer.message == "" and explorer.message_html.value == ""
    with pytest.raises(ValueError, match="unknown modalities"):
        explorer.set_modalities(["pet"])


def test_toggles_reuse_the_encoder_features(tmp_path_factory, monkeypatch, capsys):
    run = smoke_run(tmp_path_factory)
    calls = {"encode": 0, "fuse": 0}
    started = time.perf_counter()
    explorer = MissingModalityExplorer(run, device="cpu")  # fp32, as the notebook
    opened = time.perf_counter() - started
    backbone = explorer.backbone
    for name in calls:
        original = getattr(backbone, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(backbone, name, counted)
    assert explorer.cached.encode_calls == 1  # a 48^3 case is one 48^3 window
    latencies = []
    for subset in (["t1c", "t2"], ["t1"], ["flair", "t1"]):
        started = time.perf_counter()
        explorer.set_modalities(subset)
        latencies.append(time.perf_counter() - started)
    assert calls == {"encode": 0, "fuse": 3}
    explorer.set_modalities(["t1c", "t2"])  # seen before: answered from memory
    assert calls == {"encode": 0, "fuse": 3}
    with capsys.disabled():
        print(
            f"\n[explorer] fp32, 48^3 phantom case, {torch.get_num_threads()} torch threads: open "
            f"(load, encode, fuse twice, draw) {opened:.2f} s; toggle (fuse, Dice, draw) "
            f"{', '.join(f'{t:.2f}' for t in latencies)} s, median {np.median(latencies):.2f} s"
        )


def test_bf16_toggles_agree_with_fp32(explorer, capsys):
    from passion_kit.engine.runtime import cpu_has_native_bf16

    if not cpu_has_native_bf16():  # emulated bf16 took 12 s a fuse where fp32 took 0.3 s
        pytest.skip("no bf16 units on this CPU (or capped kernels): bf16 would be emulated")
    cases = {
        amp: CachedCase(
            explorer.backbone, explorer.cached.image, window=(48,) * 3, overlap=0.25, amp=amp
        )
        for amp in ("off", "bf16")
    }
    timings = {"off": [], "bf16": []}
    for mask in ((True,) * 4, (True, False, False, True), (False, True, True, False)):
        for amp, cached in cases.items():
            started = time.perf_counter()
            cached.predict(mask)
            timings[amp].append(time.perf_counter() - started)
        agreement = float((cases["bf16"].predict(mask) == cases["off"].predict(mask)).mean())
        assert agreement > 0.97, f"bf16 and fp32 agree on {agreement:.1%} of the voxels"
    with capsys.disabled():
        print(
            "\n[explorer] fuse of one new subset, 48^3 case: fp32 "
            f"{np.median(timings['off'][1:]):.2f} s, bf16 {np.median(timings['bf16'][1:]):.2f} s"
            f" (first call, with the encoder: {timings['off'][0]:.2f} s, "
            f"{timings['bf16'][0]:.2f} s)"
        )
    with pytest.raises(ValueError, match="amp must be one of"):
        CachedCase(
            explorer.backbone, explorer.cached.image, window=(48,) * 3, overlap=0.2, amp="fp8"
        )


def test_plane_slice_and_region_controls(all_on):
    explorer = all_on
    explorer.plane_picker.value = "sagittal"
    assert explorer.slice_slider.max == explorer.label.shape[0] - 1
    assert explorer.slice_slider.value == int(np.argmax((explorer.label > 0).sum((1, 2))))
    image = explorer.image.value
    explorer.slice_slider.value = 0  # outside the brain: another picture
    assert explorer.image.value != image
    explorer.slice_slider.value = int(np.argmax((explorer.label > 0).sum((1, 2))))
    image = explorer.image.value
    explorer.region_picker.value = "ET"
    assert explorer.image.value != image
    explorer.region_picker.value = "all"
    explorer.plane_picker.value = "axial"
    assert explorer.slice_slider.max == explorer.label.shape[2] - 1


def test_case_picker_encodes_each_case_once(all_on):
    explorer = all_on
    first = explorer.case_id
    other = [c for c in explorer.case_picker.options if c != first][0]
    explorer.case_picker.value = other
    assert explorer.case_id == other and explorer.cached.encode_calls == 1
    explorer.set_modalities(["t2"])
    explorer.case_picker.value = first  # still cached
    assert explorer.cached.encode_calls == 1 and explorer.modalities == ("t2",)


def test_dice_table_has_the_layout_of_summary_csv(all_on):
    explorer = all_on
    table = explorer.dice_table([["t1c"], list(explorer.names)])  # the notebook asks for all 15
    assert list(table["combination"]) == ["t1c", "all", "mean"]
    assert list(table["mask_id"]) == [1, 14, ""]  # the official BraTS ids
    everything = table.set_index("combination").loc["all"]
    assert {r: everything[f"dice_{r}"] for r in explorer.regions} == pytest.approx(explorer.dice)
    assert table.iloc[-1]["dice_WT"] == pytest.approx(table["dice_WT"].iloc[:2].mean())
    with pytest.raises(ValueError, match="at least one"):
        explorer.dice_table([[]])


def test_a_case_of_several_windows_encodes_each_window_once(explorer):
    image = torch.randn(4, 64, 56, 48)  # 2 x 2 x 1 windows of 48^3 at overlap 0.25
    cached = CachedCase(explorer.backbone, image, window=(48,) * 3, overlap=0.25)
    masks = torch.tensor([[True, True, False, True], [False, False, True, False]])
    for mask in masks:
        labels = cached.predict(mask.tolist())
        expected = predict_case(
            explorer.backbone, image, mask[None], window=(48,) * 3, overlap=0.25
        )
        assert np.array_equal(labels, expected[0].numpy())  # windows kept apart, blended alike
    assert cached.encode_calls == 4


def test_cached_case_checks_its_inputs(explorer):
    with pytest.raises(ValueError, match="image must be"):
        CachedCase(explorer.backbone, torch.zeros(3, 8, 8, 8), window=(16,) * 3, overlap=0.5)
    with pytest.raises(ValueError, match="at least one True"):
        explorer.cached.predict([False] * 4)


def _shown(volume) -> np.ndarray:
    import gzip

    import nibabel as nib

    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(volume.data)).dataobj)


def test_the_3d_tab_follows_the_prediction_and_the_case(all_on):
    pytest.importorskip("ipyniivue")
    explorer = all_on
    assert explorer.views.selected_index == 0 and widgets.VIEW_TABS[0] == "2-D slices"
    explorer.views.selected_index = 1  # what a click on the tab does
    view = explorer.view3d
    assert view is not None and view.widget in explorer.view3d_box.children
    image, label, prediction = (_shown(v) for v in view.viewer.volumes)
    assert np.array_equal(prediction, explorer.prediction)
    assert np.array_equal(label, explorer.label)
    np.testing.assert_allclose(image, explorer.cached.image[0].numpy(), rtol=1e-6)

    explorer.set_modalities(["t1c", "t2"])  # the 3-D overlay follows, over T1c
    volumes = view.viewer.volumes
    assert volumes[0].name == "t1c.nii.gz"
    assert np.array_equal(_shown(volumes[2]), explorer.prediction)
    assert not np.array_equal(_shown(volumes[2]), prediction)
    other = [c for c in explorer.case_picker.options if c != explorer.case_id][0]
    explorer.case_picker.value = other
    assert np.array_equal(_shown(view.viewer.volumes[1]), explorer.label)
    assert np.array_equal(_shown(view.viewer.volumes[2]), explorer.prediction)
    explorer.views.selected_index = 0
    explorer.views.selected_index = 1  # built once
    assert explorer.view3d is view
    explorer.case_picker.value = explorer.case_picker.options[0]


def test_without_ipyniivue_the_3d_tab_explains_and_2d_still_works(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(widgets, "niivue_missing", lambda: "The 3-D view needs ipyniivue.")
    explorer = MissingModalityExplorer(smoke_run(tmp_path_factory), device="cpu")
    explorer.views.selected_index = 1
    assert explorer.view3d is None
    assert explorer.view3d_note.value == "The 3-D view needs ipyniivue."
    image = explorer.image.value
    explorer.set_modalities(["t1c"])
    assert explorer.image.value != image and "with <b>t1c</b>" in explorer.dice_html.value

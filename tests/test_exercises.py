"""Every "Try this" exercise of notebooks 00-08, executed with the change it asks for.

A test runs a notebook's code cells top to bottom as papermill does, with smoke settings
and the exercise's values injected after the ``parameters`` cell, and then checks that
what the exercise asks about changes as the exercise says. The cells run in this process
(no kernel), so that a test can read the notebook's variables; the kernel runs are
``tests/test_notebooks.py``, which also holds notebook 09's exercises (they reuse its
grid). Runs that the exercises share (the smoke baseline and PASSION) are trained once.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def execute(stem: str, *, stop_before: str = "", **parameters) -> dict:
    """Run notebook ``stem``'s code cells in a fresh namespace; returns the namespace.

    ``parameters`` replace the values of the parameters cell, as papermill injects them;
    each must be declared there. ``stop_before``: stop at the first cell that contains
    this text (an exercise about what precedes it). ``display`` is a no-op (no front end).
    """
    (path,) = (ROOT / "notebooks").glob(f"{stem}_*.ipynb")
    notebook = nbformat.read(path, as_version=4)
    namespace: dict = {"__name__": "__main__", "display": lambda *args, **kwargs: None}
    here = os.getcwd()
    os.chdir(path.parent)  # the notebooks' relative paths
    try:
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            if stop_before and stop_before in cell.source:
                break
            exec(compile(cell.source, f"{path.name}, cell {index}", "exec"), namespace)  # noqa: S102
            if "parameters" in cell.metadata.get("tags", []):
                unknown = set(parameters) - set(namespace)
                assert not unknown, f"{path.name} declares no parameter {sorted(unknown)}"
                namespace.update(parameters)
    finally:
        os.chdir(here)
    return namespace


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    """The data root and the run folder the smoke runs share (each exercise that changes
    what a run is gets a folder of its own where names would collide)."""
    base = tmp_path_factory.mktemp("exercises")
    return {"data_root": str(base / "data"), "run_dir": str(base / "runs"), "base": base}


def smoke(dirs: dict, **extra) -> dict:
    return {"smoke": True, "data_root": dirs["data_root"]} | extra


# --- 00 ---------------------------------------------------------------------------------
def test_00_device_cpu_changes_the_device_row(dirs):
    ns = execute("00", **smoke(dirs, device="cpu"))
    assert ns["info"]["device"].startswith("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: cuda is possible")
def test_00_cuda_without_a_gpu_fails_with_a_message(dirs):
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        execute("00", **smoke(dirs, device="cuda"))


def test_00_an_empty_data_root_follows_the_variable(dirs, monkeypatch, tmp_path):
    monkeypatch.setenv("PASSION_KIT_DATA", str(tmp_path))
    ns = execute("00", **smoke(dirs, data_root=""))
    assert ns["info"]["data root"] == str(tmp_path)


def test_00_the_glossary_says_which_notebook_shows_omega():
    from test_glossary import ROWS

    (row,) = [r for r in ROWS if "\\omega_m" in r["symbol"]]
    assert row["notebooks"][0] == "02_missing_rates.ipynb"


# --- 01 ---------------------------------------------------------------------------------
def test_01_phantom_size_64_gets_its_own_folder_and_keeps_the_pattern(dirs):
    from passion_kit.data.phantom import design_target_failures

    ns = execute("01", **smoke(dirs, phantom_size=64))
    assert ns["root"].name == "phantom_smoke_64"  # not the 32^3 folder, which it would refuse
    assert ns["image"].shape[1:] == (64, 64, 64)
    assert design_target_failures(ns["table"]) == []  # FLAIR/T2 for WT, T1c for ET and TC


def test_01_another_test_case(dirs):
    ns = execute("01", **smoke(dirs, case_index=2))
    assert ns["case"]["case_id"] != execute("01", **smoke(dirs))["case"]["case_id"]
    assert ns["class_means"].idxmax()["t1c"] == "3 enhancing"


def test_01_the_3d_view_draws_t1(dirs):
    ns = execute("01", **smoke(dirs, view_modality="t1"))
    assert ns["names"][ns["v"]] == "t1"
    if ns["view"] is not None:
        assert np.array_equal(ns["view"].volumes["image"], ns["image"][2])


# --- 02 ---------------------------------------------------------------------------------
def test_02_mr8852_moves_the_largest_omega_and_the_commonest_combination(dirs):
    ns = execute("02", **smoke(dirs, split_name="mr8852"))
    names = list(ns["BRATS2020"].modalities.modalities)
    assert names[int(ns["brats_omega"].argmax())] in ("t1", "t1c")  # missing 80 %
    default = execute("02", **smoke(dirs))
    assert names[int(default["brats_omega"].argmax())] == "t2"  # mr2468: T2 missing 80 %
    top = ns["patterns"].set_index("combination")["published"].idxmax()
    assert "t2" in top.split("+") or top == "all"


def test_02_mr1379_gives_some_combinations_a_single_case(dirs):
    ns = execute("02", **smoke(dirs, split_name="mr1379"))
    patterns = ns["patterns"]
    rare = patterns[patterns["N P(c)"] < 1]
    assert len(rare) >= 1 and (rare["allotted"] == 1).all()


def test_02_more_pdt_epochs_come_closer_to_8_15(dirs):
    def gap(ns):
        return float((ns["drawn"].float().mean(0) - 8 / 15).abs().max())

    five, fifty = execute("02", **smoke(dirs)), execute("02", **smoke(dirs, pdt_epochs=50))
    assert len(fifty["drawn"]) == 10 * len(five["drawn"])
    assert gap(fifty) < gap(five)


# --- 03 ---------------------------------------------------------------------------------
def test_03_without_t1c_the_trust_moves(dirs):
    ns = execute("03", **smoke(dirs, run_dir=dirs["run_dir"], absent="t1c"))
    a = ns["names"].index("t1c")
    weights = ns["weights"]  # (2 masks, regions, modalities)
    keep = [k for k in range(weights.shape[-1]) if k != a]
    assert (weights[1, :, a] == 0).all() and (weights[0, :, a] > 0).any()
    assert not torch.allclose(weights[0][:, keep], weights[1][:, keep])  # redistributed


def test_03_coarsest_level_and_another_case(dirs):
    from passion_kit.data import PreparedDataset

    ns = execute("03", **smoke(dirs, run_dir=dirs["run_dir"], rfm_level=3, case_index=1))
    test_cases = PreparedDataset(ns["loaded"].root, "test", setting="full").case_ids
    assert ns["case"]["case_id"] == test_cases[1]
    weights = ns["weights"]  # level 3: the coarsest, still weights in [0, 1] and 0 if absent
    assert ((weights >= 0) & (weights <= 1)).all() and (weights[1, :, ns["a"]] == 0).all()


def test_03_a_random_positional_embedding_leaves_the_prediction_untouched(dirs):
    ns = execute("03", **smoke(dirs, run_dir=dirs["run_dir"], mmformer_pos="random"))
    assert ns["absent_tokens"].any()  # no longer 0 (as built, the embedding is 0)
    assert torch.equal(ns["absent_tokens"], ns["mmformer"].pos[ns["a"]])
    assert (ns["sensitivity"].iloc[1] < 1e-4).all()  # and the absent modality still adds 0


# --- 04 ---------------------------------------------------------------------------------
def test_04_a_lower_temperature_gathers_the_kl_where_the_classes_differ(dirs):
    sharp = execute("04", **smoke(dirs, temperature=1.0))
    soft = execute("04", **smoke(dirs, temperature=8.0))
    assert sharp["students"] == soft["students"]
    assert float(sharp["on_disagreement"].mean()) > float(soft["on_disagreement"].mean())


def test_04_every_modality_gives_t2_a_student(dirs):
    ns = execute("04", **smoke(dirs, case=3, combination="all"))
    assert ns["students"] == list(ns["names"])


def test_04_two_modalities_open_the_gate_for_one(dirs):
    ns = execute("04", **smoke(dirs, combination="flair+t2", student="t2"))
    assert ns["students"] == ["flair", "t2"] and int(ns["gate"].sum()) == 1
    assert ns["alone"] == "flair"


def test_04_another_class(dirs):
    ns = execute("04", **smoke(dirs, focus_class="enhancing", student="t1c"))
    assert ns["classes"][ns["k"]] == "enhancing" and ns["students"][ns["i"]] == "t1c"


# --- 05 ---------------------------------------------------------------------------------
def test_05_compare_with_the_baseline(dirs):
    ns = execute("05", **smoke(dirs, run_dir=dirs["run_dir"], compare={"objective": "baseline"}))
    ours, theirs = ns["history"], ns["other_history"]
    for term in ("pixel", "proto"):  # what the baseline does not have
        assert ours[term].notna().all()
        assert term not in theirs or theirs[term].isna().all()
    assert ns["other"].name == "phantom_rfnet_baseline_idt_s0"


def test_05_twice_the_epochs_halve_each_eta_step(dirs):
    from passion_kit.lessons.plots import scheduled_eta

    # the run's configuration, as the notebook builds it (the schedule needs no training)
    ns = execute(
        "05", stop_before="run = fit(cfg)", **smoke(dirs, run_dir=dirs["run_dir"], epochs=18)
    )
    cfg = ns["cfg"]
    eta = np.array(scheduled_eta(cfg))
    nine = np.array(scheduled_eta(copy.deepcopy(cfg).override(["train.epochs=9"])))
    assert cfg.train.epochs == 18 and len(eta) == 18  # the row doubles its length
    assert np.allclose(eta.reshape(9, 2), nine[:, None] / 2)  # and each step halves
    assert cfg.run_name().endswith("_epochs18")  # not the folder of a run of another length


def test_05_compare_with_pdt(dirs):
    ns = execute("05", **smoke(dirs, run_dir=dirs["run_dir"], compare={"setting": "pdt"}))
    assert ns["other_cfg"].data.setting == "pdt" and len(ns["other_summary"]) == 16
    singles = ns["other_summary"].iloc[:4]  # the single-modality rows come first
    assert singles["combination"].str.count(r"\+").eq(0).all()


def test_05_passion_without_the_prototype_term(dirs):
    change = {"overrides": ["objective.weight_proto=0"]}
    ns = execute("05", **smoke(dirs, run_dir=dirs["run_dir"], compare=change))
    assert ns["other_cfg"].objective.weight_proto == 0
    assert ns["other"].name == "phantom_rfnet_passion_idt_s0_weight_proto0"
    assert ns["cfg"].objective.weight_proto > 0


def test_05_passion_on_mmformer(dirs):
    ns = execute("05", **smoke(dirs, run_dir=dirs["run_dir"], backbone="mmformer"))
    assert ns["cfg"].model.backbone == "mmformer" and ns["run"].name.startswith("phantom_mmformer")
    assert ns["history"]["pixel"].notna().all() and len(ns["summary"]) == 16


# --- 06 ---------------------------------------------------------------------------------
def test_06_mr8852(dirs):
    run_dir = str(dirs["base"] / "runs_mr8852")  # smoke names do not carry the split
    ns = execute("06", **smoke(dirs, run_dir=run_dir, missing_rates="mr8852"))
    assert all(ns["histories"]) and ns["cfg"].data.missing_rates == "mr8852"
    omega, last = ns["omega"]["omega = N / n_m"], ns["last"]["passion"]
    assert last["beta"].notna().all() and list(last.index) == list(omega.index)


def test_06_redcore_replayed_by_passions_update(dirs):
    ns = execute("06", **smoke(dirs, run_dir=dirs["run_dir"], balancing=["redcore"]))
    replayed = ns["redcore_replayed"]
    assert replayed is not None and np.allclose(replayed["replayed"], replayed["beta"], atol=1e-5)


def test_06_another_seed(dirs):
    ns = execute("06", **smoke(dirs, run_dir=dirs["run_dir"], seed=1))
    assert all(run.name.endswith("_s1") for run in ns["runs"].values())
    assert ns["laggard"] in list(ns["omega"].index)


# --- 07 ---------------------------------------------------------------------------------
def test_07_a_single_modality(dirs):
    ns = execute("07", **smoke(dirs, run_dir=dirs["run_dir"], combination="flair"))
    assert int(ns["mask"].sum()) == 1 and bool(ns["mask"][list(ns["ms"].modalities).index("flair")])
    assert int(ns["absent"].sum()) == 3  # the features of the three zeroed channels


def test_07_mmformer_zero_inputs(dirs):
    ns = execute("07", **smoke(dirs, run_dir=dirs["run_dir"], backbone="mmformer"))
    assert ns["loaded"].cfg.model.backbone == "mmformer"
    assert "zeroed inputs, no mask" in ns["views"]


@pytest.mark.parametrize("convention", ["brats", "monai"])
def test_07_another_hd95_convention(dirs, convention):
    ns = execute("07", **smoke(dirs, run_dir=dirs["run_dir"], hd95_convention=convention))
    hd = ns["hd"]
    if convention == "brats":  # only an empty-set value moves
        assert (hd["moved"] == hd["one set empty"]).all()
    else:  # another definition: the empty-set value is MONAI's, and any region may move
        from passion_kit.engine.evaluate import HD95_EMPTY

        assert (hd.loc[hd["one set empty"], "monai"] == HD95_EMPTY["monai"]).all()


def test_07_etpro_at_50_voxels(dirs):
    ns = execute("07", **smoke(dirs, run_dir=dirs["run_dir"], etpro_threshold=50))
    assert ns["theta"] == 50 and ns["rescored"] is not None
    assert ns["emptied_at_theta"] <= ns["emptied"] + 0.05  # fewer ET predictions emptied


# --- 08 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explorer_dirs(tmp_path_factory) -> dict:
    """The explorer's smoke checkpoint, shared with tests/test_widgets.py."""
    base = tmp_path_factory.getbasetemp() / "explorer"
    return {"data_root": str(base / "data"), "run_dir": str(base / "runs"), "device": "cpu"}


@pytest.mark.parametrize("ticked", [["flair", "t1", "t2"], ["t1"]], ids=["no-t1c", "t1-only"])
def test_08_another_subset_changes_the_dice(explorer_dirs, ticked):
    ns = execute("08", smoke=True, ticked=ticked, **explorer_dirs)
    assert ns["ticked_modalities"] == tuple(ticked)
    assert ns["ticked_dice"] != ns["all_dice"]  # the table of section 4 moved
    if "flair" not in ticked:  # section 5 zeroes FLAIR: unticked, it changes nothing
        assert ns["zeroed_same"] and not ns["zeroed_ticked"]


def test_08_zeroing_a_ticked_modality_changes_the_prediction(explorer_dirs):
    ns = execute("08", smoke=True, zeroed="t2", **explorer_dirs)
    assert ns["zeroed_ticked"] and not ns["zeroed_same"]

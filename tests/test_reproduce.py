from __future__ import annotations

import json
import os

import pytest

from passion_kit.reproduce import GRIDS, execute_notebook, grid_points, reproduce, with_overrides


def test_grid_points_cover_the_product_with_unique_names():
    grid = with_overrides(GRIDS["default"], objectives=["baseline", "passion", "pmr"], seeds=[0, 1])
    points = grid_points(grid)
    assert len(points) == 6
    assert len({p["name"] for p in points}) == 6
    assert {p["objective"] for p in points} == {"baseline", "passion", "pmr"}
    assert len(grid_points(GRIDS["paper"])) == 3 * 2 * 8


def test_changed_parameters_name_the_runs():
    grid = with_overrides(GRIDS["default"], seeds=[0])
    grid.parameters = {**grid.parameters, "epochs": 40, "smoke": True}
    names = [p["name"] for p in grid_points(grid)]
    assert names == [
        "phantom_rfnet_baseline_mr2468_s0_epochs40",
        "phantom_rfnet_passion_mr2468_s0_epochs40",
    ]


def test_unknown_grid_and_missing_notebook_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown grid"):
        reproduce("huge", out=tmp_path)
    with pytest.raises(FileNotFoundError, match="source checkout"):
        reproduce("default", out=tmp_path, notebook=tmp_path / "missing.ipynb")


def test_the_cli_offers_every_grid_and_the_balancing_grid_compares_five_objectives():
    from passion_kit.__main__ import GRID_NAMES
    from passion_kit.objectives import available_objectives
    from passion_kit.reproduce import GRIDS

    assert sorted(GRID_NAMES) == sorted(GRIDS)
    balancing = GRIDS["balancing"]
    assert set(balancing.objectives) == set(available_objectives())
    assert len(balancing.seeds) >= 3
    names = [p["name"] for p in grid_points(balancing)]
    assert len(set(names)) == 15
    # the main job's recipe: its baseline and PASSION runs are the main job's own
    main_job = {p["name"] for p in grid_points(GRIDS["default"])}
    assert main_job <= set(names)


@pytest.mark.skipif(os.name == "nt", reason="IPC transport needs Unix sockets")
def test_notebooks_run_on_a_kernel_over_ipc_not_tcp_ports(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "from ipykernel.connect import get_connection_info\nprint(get_connection_info(), x)"
        ),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python"}
    source, executed = tmp_path / "probe.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(notebook, source)
    execute_notebook(source, executed, {"x": 7}, kernel_name="python3", progress_bar=False)
    text = nbformat.read(executed, as_version=4).cells[-1].outputs[0]["text"]
    assert '"transport": "ipc"' in text and "passion-kit-kernel-" in text and text.endswith("7\n")
    folder = json.loads(text.rsplit(" ", 1)[0])["ip"].rsplit("/", 1)[0]
    assert not os.path.exists(folder)  # the sockets' private folder is removed at shutdown


def test_gather_tables_runs_and_their_mean_over_seeds(tmp_path):
    import pandas as pd

    from passion_kit.reproduce import Grid, gather

    points = grid_points(Grid(objectives=["baseline", "passion"], seeds=[0, 1]))
    for i, point in enumerate(points):
        folder = tmp_path / "runs" / point["name"] / "eval" / "test"
        folder.mkdir(parents=True)
        dice = 0.1 * (i + 1)  # baseline 0.1, 0.2; passion 0.3, 0.4
        pd.DataFrame(
            {"combination": ["t1", "mean"], "dice_WT": [0.0, dice], "dice_ET": [0.0, dice / 2]}
        ).to_csv(folder / "summary.csv", index=False)
        history = {"epoch": [0, 0], "modality": ["t1", "t2"], "beta": [1.0, 1.0]}
        pd.DataFrame(history).to_csv(folder.parents[1] / "history_modality.csv", index=False)
    paths = gather(tmp_path, points)
    assert len(pd.read_csv(paths["table"])) == 4
    seeds = pd.read_csv(paths["seeds"]).set_index("objective")
    assert seeds.loc["passion", "WT mean"] == pytest.approx(0.35)
    assert seeds.loc["passion", "WT std"] == pytest.approx(0.0707107, rel=1e-5)  # sample std
    text = paths["markdown"].read_text()
    assert "| rfnet | mr2468 | idt | passion | 2 | 0.350 ± 0.071 | 0.175 ± 0.035 |" in text
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"


def test_gather_keeps_the_settings_apart(tmp_path):
    """The imbalance grid's IDT and PDT runs of one objective are two rows over seeds, not
    one pooled row."""
    import pandas as pd

    from passion_kit.reproduce import Grid, gather

    grid = Grid(objectives=["baseline"], settings=["idt", "pdt"], seeds=[0, 1])
    points = grid_points(grid)
    for point in points:
        folder = tmp_path / "runs" / point["name"] / "eval" / "test"
        folder.mkdir(parents=True)
        dice = (0.8 if point["setting"] == "idt" else 0.9) + 0.01 * point["seed"]
        pd.DataFrame({"combination": ["t1", "mean"], "dice_WT": [0.0, dice]}).to_csv(
            folder / "summary.csv", index=False
        )
    paths = gather(tmp_path, points)
    table = pd.read_csv(paths["table"])
    assert sorted(table["setting"]) == ["idt", "idt", "pdt", "pdt"]
    named = ("backbone", "objective", "missing_rates", "setting", "seed")
    assert [c for c in table.columns if c not in named] == ["WT"]
    seeds = pd.read_csv(paths["seeds"]).set_index("setting")
    assert len(seeds) == 2 and (seeds["WT count"] == 2).all()
    assert seeds.loc["idt", "WT mean"] == pytest.approx(0.805)
    assert seeds.loc["pdt", "WT mean"] == pytest.approx(0.905)


def test_paired_effect_by_seed_with_a_t_interval(tmp_path):
    import pandas as pd

    from passion_kit.reproduce import Grid, format_effect, gather, paired_effect

    points = grid_points(Grid(objectives=["baseline", "passion"], seeds=[0, 1, 2]))
    # Per seed: baseline Dice b_s, PASSION b_s + d_s, with d = (0.18, 0.2, 0.22) on t1
    # (better), (-0.22, -0.2, -0.18) on t2 (worse) and (-0.1, 0.0, 0.1) on the mean (unclear).
    base = {0: 0.5, 1: 0.2, 2: 0.7}
    diffs = {"t1": [0.18, 0.2, 0.22], "t2": [-0.22, -0.2, -0.18], "mean": [-0.1, 0.0, 0.1]}
    for point in points:
        s = point["seed"]
        folder = tmp_path / "runs" / point["name"] / "eval" / "test"
        folder.mkdir(parents=True)
        on = point["objective"] == "passion"
        dice = [base[s] + (diffs[c][s] if on else 0.0) for c in diffs]
        pd.DataFrame({"combination": list(diffs), "dice_WT": dice}).to_csv(
            folder / "summary.csv", index=False
        )
        history = {"epoch": [0, 0], "modality": ["t1", "t2"], "beta": [1.0, 1.0]}
        pd.DataFrame(history).to_csv(folder.parents[1] / "history_modality.csv", index=False)
    effect = paired_effect(tmp_path, points).set_index("combination")
    half = 4.302653 * 0.02 / 3**0.5  # t(0.975, 2) * sd / sqrt(n)
    assert effect.loc["t1", "WT mean"] == pytest.approx(0.2)
    assert effect.loc["t1", "WT low"] == pytest.approx(0.2 - half, rel=1e-5)
    assert effect.loc["t1", "WT high"] == pytest.approx(0.2 + half, rel=1e-5)
    assert list(effect["WT verdict"]) == ["better", "worse", "unclear"]
    assert (effect["seeds"] == 3).all()
    text = format_effect(paired_effect(tmp_path, points))
    assert "WT: better in 1 of 2 combinations (t1); worse in 1 (t2)" in text
    assert f"+0.200 [{0.2 - half:+.3f}, {0.2 + half:+.3f}]+" in text
    paths = gather(tmp_path, points)
    assert paths["effect_figure"].read_bytes()[:4] == b"\x89PNG"
    assert "t1" in paths["effect_markdown"].read_text()
    one_seed = [p for p in points if p["seed"] == 0]
    assert "one seed: no interval" in format_effect(paired_effect(tmp_path, one_seed))
    assert text.startswith(
        "PASSION minus baseline, Dice per combination (rfnet, mr2468, idt, 3 seeds"
    )


def test_the_imbalance_grid_pairs_idt_with_pdt_and_reuses_the_main_job_runs():
    from passion_kit.reproduce import GRIDS

    main = {p["name"] for p in grid_points(GRIDS["default"])}
    imbalance = grid_points(GRIDS["imbalance"])
    idt = [p for p in imbalance if p["setting"] == "idt"]
    pdt = [p for p in imbalance if p["setting"] == "pdt"]
    assert len(idt) == len(pdt) == 3
    assert {p["name"] for p in idt} <= main  # the main job's baseline runs
    assert all(p["name"].endswith("_pdt") for p in pdt)


def test_point_name_is_the_grid_name_of_the_main_job_runs():
    from passion_kit.reproduce import point_name

    names = [p["name"] for p in grid_points(GRIDS["default"])]
    shared = GRIDS["default"].parameters
    assert point_name("passion", seed=0, **shared) in names
    assert point_name("baseline", seed=2, **shared) in names
    assert point_name("passion", **shared, epochs=40).endswith("_s0_epochs40")


def test_a_point_whose_kernel_fails_once_runs_again_and_a_second_failure_stops(
    tmp_path, monkeypatch
):

    import passion_kit.reproduce as rep

    calls: list[str] = []

    def fake_execute(notebook, output, parameters, **kwargs):
        name = parameters["name"]
        calls.append(name)
        if name.endswith("_s1") and calls.count(name) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        if name.endswith("_s2"):
            raise RuntimeError("a real bug")
        _write_point_outputs(parameters)

    monkeypatch.setattr(rep, "execute_notebook", fake_execute)
    monkeypatch.setattr(rep, "_prepare_data", lambda todo, notebook: None)
    grid = rep.Grid(objectives=["baseline"], seeds=[0, 1], parameters={"dataset": "phantom"})
    lines: list[str] = []
    rep.reproduce(grid, out=tmp_path, jobs=2, log=lines.append)
    assert (
        sorted(calls)
        == ["phantom_rfnet_baseline_mr2468_s0"] + ["phantom_rfnet_baseline_mr2468_s1"] * 2
    )
    assert any("RuntimeError Kernel died" in line and "running it again" in line for line in lines)
    grid.seeds = [2]
    with pytest.raises(RuntimeError, match="a real bug"):
        rep.reproduce(grid, out=tmp_path, jobs=1, log=lines.append)


def test_a_cpu_grid_runs_one_point_more_than_cores_single_threaded_longest_first(
    tmp_path, monkeypatch
):
    import threading

    import passion_kit.reproduce as rep

    started: list[tuple[str, int]] = []
    gate = threading.Barrier(3, timeout=30)  # three points must be running at once

    def fake_execute(notebook, output, parameters, **kwargs):
        started.append((parameters["name"], parameters["threads"]))
        if len(started) <= 3:
            gate.wait()
        _write_point_outputs(parameters)

    monkeypatch.setattr(rep.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(rep, "execute_notebook", fake_execute)
    monkeypatch.setattr(rep, "_prepare_data", lambda todo, notebook: None)
    grid = rep.Grid(seeds=[0, 1, 2], parameters={"preset": "cpu", "dataset": "phantom"})
    assert rep.auto_jobs(grid) == 3  # the cpu preset on 2 cores
    assert rep.auto_jobs(rep.Grid(parameters={"preset": "brats2020-paper"})) == 1
    monkeypatch.setattr(rep.os, "cpu_count", lambda: 1)
    assert rep.auto_jobs(grid) == 1
    rep.reproduce(grid, out=tmp_path, jobs=3, log=lambda line: None)
    assert {threads for _, threads in started} == {1}
    objectives = [name.split("_")[2] for name, _ in started]
    assert objectives[:3] == ["passion"] * 3 and sorted(objectives[3:]) == ["baseline"] * 3


def test_parallel_points_survive_the_working_folder_papermill_changes(tmp_path, monkeypatch):
    """papermill changes the process's working folder per notebook; threads share it."""
    from pathlib import Path

    import papermill as pm

    import passion_kit.reproduce as rep

    seen = {}

    def fake_pm(notebook, output, parameters=None, **kwargs):
        seen.setdefault("paths", []).append((notebook, output, kwargs.get("cwd")))
        os.chdir(kwargs["cwd"])  # as papermill does, and a sibling thread restores late
        _write_point_outputs(parameters)
        Path(output).write_text("{}")

    monkeypatch.setattr(pm, "execute_notebook", fake_pm)
    monkeypatch.setattr(rep, "_prepare_data", lambda todo, notebook: None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nb").mkdir()
    notebook = tmp_path / "nb" / "05.ipynb"
    notebook.write_text("{}")
    grid = rep.Grid(seeds=[0, 1, 2], parameters={"dataset": "phantom"})
    paths = rep.reproduce(grid, out="outputs/rel", notebook="nb/05.ipynb", jobs=3, log=print)
    assert Path.cwd() == tmp_path  # restored
    assert all(Path(a).is_absolute() and Path(b).is_absolute() for a, b, _ in seen["paths"])
    assert (tmp_path / "outputs" / "rel" / "summary.csv").is_file()
    assert len(list((tmp_path / "outputs" / "rel" / "notebooks").iterdir())) == 6
    assert paths["table"] == tmp_path / "outputs" / "rel" / "summary.csv"


def _write_point_outputs(parameters: dict) -> None:
    """What a point's notebook leaves for gather(): its test summary and beta history."""
    from pathlib import Path

    import pandas as pd

    folder = Path(parameters["run_dir"]) / parameters["name"] / "eval" / "test"
    folder.mkdir(parents=True)
    pd.DataFrame({"combination": ["t1", "mean"], "dice_WT": [0.5, 0.5]}).to_csv(
        folder / "summary.csv", index=False
    )
    history = {"epoch": [0], "modality": ["t1"], "beta": [1.0]}
    pd.DataFrame(history).to_csv(folder.parents[1] / "history_modality.csv", index=False)

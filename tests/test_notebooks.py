"""Every notebook: committed clean, thin, and executed by papermill with smoke parameters."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from passion_kit.reproduce import execute_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_series_is_numbered_from_00():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 10


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_structured(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "Time" in nb.cells[0].source or "time" in nb.cells[0].source  # states its cost
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "smoke" in tagged[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "committed with outputs"
        assert cell.source.count("\ndef ") + cell.source.startswith("def ") <= 1
    assert "assert" in code[-1].source, "the last cell checks what the notebook showed"


def test_the_notebooks_default_to_the_main_jobs_phantom_and_runs():
    """Notebook 01 writes the phantom the main job trains on, and notebooks 06-08 read the
    main job's runs, so that a reader who ran the main job never waits twice."""
    import papermill as pm

    from passion_kit.config import ExperimentConfig

    cpu = ExperimentConfig.preset("cpu").data

    def defaults(stem: str) -> dict:
        (path,) = [p for p in NOTEBOOKS if p.stem.startswith(stem)]
        return {k: v["default"] for k, v in pm.inspect_notebook(str(path)).items()}

    data = defaults("01")
    assert (int(data["phantom_cases"]), int(data["phantom_size"])) == (
        cpu.phantom_cases,
        cpu.phantom_size,
    )
    for stem in ("06", "07"):
        assert defaults(stem)["run_dir"] == '"../outputs/reproduce/runs"'
    assert defaults("08")["main_job"] == '"../outputs/reproduce"'


@pytest.fixture(scope="session")
def notebook_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebooks")
    return {"data_root": str(base / "data"), "run_dir": str(base / "runs"), "out": base}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_smoke_parameters(path, notebook_dirs):
    import papermill as pm

    declared = pm.inspect_notebook(str(path))
    wanted = {
        "smoke": True,
        "data_root": notebook_dirs["data_root"],
        "run_dir": notebook_dirs["run_dir"],
    }
    if "balancing" in declared:  # one balancing run joins the comparison (the cheapest)
        wanted["balancing"] = ["redcore"]
    if "out" in declared:
        wanted["out"] = str(notebook_dirs["out"] / "reproduce")
    parameters = {k: v for k, v in wanted.items() if k in declared}
    executed = notebook_dirs["out"] / path.name
    execute_notebook(  # papermill, over the kit's IPC kernel manager
        path,
        executed,
        parameters,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(path.parent),
    )
    errors = [
        o
        for c in json.loads(executed.read_text())["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert errors == []


@pytest.mark.slow
def test_the_explorer_notebook_opens_the_shipped_checkpoint_without_training(tmp_path):
    """With its default parameters and no main job, notebook 08 trains nothing: it unpacks
    the checkpoint that ships in the package (and generates the phantom) and explores it."""
    (path,) = [p for p in NOTEBOOKS if p.stem.startswith("08")]
    runs = tmp_path / "runs"
    parameters = {
        "data_root": str(tmp_path / "data"),
        "run_dir": str(runs),
        "main_job": str(tmp_path / "no_main_job"),
        "device": "cpu",
    }
    executed = tmp_path / path.name
    execute_notebook(
        path, executed, parameters, kernel_name="python3", progress_bar=False, cwd=str(path.parent)
    )
    assert sorted(p.name for p in runs.iterdir()) == ["explorer_shipped"]
    assert not (runs / "explorer_shipped" / "checkpoint_epoch1.pt").exists()  # not trained
    seconds = json.loads(executed.read_text())["metadata"]["papermill"]["duration"]
    print(f"\n[notebook 08] default parameters, shipped checkpoint: executed in {seconds:.1f} s")


def _executed_without_errors(executed: Path) -> dict:
    """The executed notebook, after checking that no cell raised."""
    done = json.loads(executed.read_text())
    errors = [
        o for c in done["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert errors == []
    return done


@pytest.mark.slow
def test_notebook_04_runs_with_its_defaults_on_the_shipped_checkpoint(tmp_path):
    """Without the main job, notebook 04 opens the checkpoint shipped in the package and
    runs every cell on a whole phantom case (not the smoke crop)."""
    (path,) = [p for p in NOTEBOOKS if p.stem.startswith("04")]
    parameters = {"data_root": str(tmp_path / "data"), "run_dir": str(tmp_path / "no_main_job")}
    executed = tmp_path / path.name
    execute_notebook(
        path, executed, parameters, kernel_name="python3", progress_bar=False, cwd=str(path.parent)
    )
    text = json.dumps(_executed_without_errors(executed)["cells"])
    assert "network: explorer" in text or "resources" in text  # the shipped run was used


@pytest.mark.slow
def test_notebook_04_runs_with_its_defaults_on_a_main_job_run(tmp_path):
    """Notebook 04 on a run where the main job puts its PASSION run of seed 0 (its name and
    phantom, trained in fp32 here for one short epoch): the asserts hold for a network other
    than the shipped one."""
    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.grid import point_name
    from passion_kit.engine.runs import RunFiles
    from passion_kit.engine.train import fit

    runs, data = tmp_path / "runs", tmp_path / "data"
    name = point_name("passion", preset="cpu", dataset="phantom")
    cfg = ExperimentConfig.preset("cpu").override(
        [
            f"data.root={data / 'phantom'}",
            f"train.run_dir={runs}",
            f"train.name={name}",
            "train.epochs=1",
            "train.amp=off",
            "data.patch_size=16",
            "eval.window=16",
            "train.progress=false",
        ]
    )
    assert RunFiles(fit(cfg)).complete()
    (path,) = [p for p in NOTEBOOKS if p.stem.startswith("04")]
    executed = tmp_path / path.name
    execute_notebook(
        path,
        executed,
        {"data_root": str(data), "run_dir": str(runs)},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(path.parent),
    )
    text = json.dumps(_executed_without_errors(executed)["cells"])
    assert f"network: {name}" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [{"seeds": "0,1,2"}, {"objectives": "baseline,passion,redcore"}, {"grid": "imbalance"}],
    ids=["more-seeds", "third-objective", "imbalance"],
)
def test_notebook_09_exercises(change, notebook_dirs):
    """Notebook 09's exercises, on the smoke grid that the smoke run above made (its
    finished points are skipped, so an exercise trains only what it adds)."""
    import pandas as pd

    (path,) = [p for p in NOTEBOOKS if p.stem.startswith("09")]
    # the imbalance grid names its IDT points' setting, which the default grid leaves
    # implicit: reproduce refuses to mix the two in one folder, so it gets its own
    out = notebook_dirs["out"] / ("reproduce_imbalance" if "grid" in change else "reproduce")
    parameters = {"smoke": True, "data_root": notebook_dirs["data_root"], "out": str(out)}
    executed = notebook_dirs["out"] / f"09_{'_'.join(change)}.ipynb"
    execute_notebook(
        path,
        executed,
        parameters | change,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(path.parent),
    )
    _executed_without_errors(executed)
    table = pd.read_csv(out / "summary.csv")
    if "seeds" in change:  # two objectives, three seeds
        assert sorted(table["seed"].unique()) == [0, 1, 2] and len(table) == 6
    if "objectives" in change:  # a third objective adds every objective's dynamics figure
        assert set(table["objective"]) == {"baseline", "passion", "redcore"}
        assert list((out / "figures").glob("dynamics_*.png"))
    if "grid" in change:  # the effect becomes IDT minus PDT, for the baseline
        assert set(table["objective"]) == {"baseline"} and (out / "gap.csv").exists()

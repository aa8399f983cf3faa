"""Batch reproduction: run the training/evaluation notebook over a grid with papermill.

Each grid point (backbone x objective x missing-rate split x seed) executes
``notebooks/05_train_and_evaluate.ipynb`` with its parameters; the executed notebook is
kept under ``<out>/notebooks/``, the run under ``<out>/runs/``. A point whose run is
already evaluated is skipped, so an interrupted grid resumes where it stopped. At the
end one table (``summary.csv`` / ``summary.md``: mean Dice over the combinations per
point, and averaged over seeds) and one figure gather the grid.

Usage::

    python -m passion_kit reproduce                     # default grid: phantom, CPU
    python -m passion_kit reproduce --grid paper        # the paper's grid (GPU, BraTS2020)
    python -m passion_kit reproduce --objectives baseline,passion --seeds 0,1,2
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from passion_kit.engine.grid import Grid, grid_points, point_name
from passion_kit.io import atomic_write_text, check_name, inside, markdown_table

__all__ = [
    "Grid",
    "GRIDS",
    "auto_jobs",
    "NOTEBOOK",
    "execute_notebook",
    "format_effect",
    "gather",
    "grid_points",
    "kernel_manager_class",
    "paired_effect",
    "plot_effect",
    "point_name",
    "reproduce",
    "run_machines",
    "run_overview",
]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_train_and_evaluate.ipynb"


GRIDS: dict[str, Grid] = {
    # the main job (minutes on a 2-core CPU): RFNet trained without and with PASSION on
    # the built-in phantom under mr2468, three seeds, so the effect has an interval
    "default": Grid(seeds=[0, 1, 2], parameters={"preset": "cpu", "dataset": "phantom"}),
    # the balancing comparison: PASSION against the baseline and three modality-balancing
    # methods, three seeds, on the phantom with the main job's recipe (into the main job's
    # --out, its baseline and PASSION runs are reused: 9 more runs)
    "balancing": Grid(
        objectives=["baseline", "passion", "ogm_ge", "pmr", "redcore"],
        seeds=[0, 1, 2],
        parameters={"preset": "cpu", "dataset": "phantom"},
    ),
    # does imbalance matter? the baseline under mr2468 IDT against the baseline trained
    # with every modality (PDT), three seeds; the IDT runs are the main job's
    "imbalance": Grid(
        objectives=["baseline"],
        settings=["idt", "pdt"],
        seeds=[0, 1, 2],
        parameters={"preset": "cpu", "dataset": "phantom"},
    ),
    # the paper: three backbones, eight BraTS2020 splits, 300 epochs at 80^3 (GPU, days)
    "paper": Grid(
        backbones=["rfnet", "mmformer", "m2ftrans"],
        missing_rates=[
            "mr1379", "mr2258", "mr2285", "mr2468", "mr5528", "mr5582", "mr8825", "mr8852",
        ],
        seeds=[1037],
        parameters={"preset": "brats2020-paper", "dataset": "brats2020"},
    ),
}  # fmt: skip


KERNEL_PREFIX = "passion-kit-kernel-"


def remove_orphan_kernels() -> list[Path]:
    """Remove the private kernel folders (sockets, connection file) that a killed grid left
    in the system's temporary folder: those whose owning process has ended."""
    import tempfile

    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{KERNEL_PREFIX}*"):
        try:
            pid = int((folder / "owner").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except (OSError, ValueError):
            continue  # another user's, or one of an earlier kit: left alone
    return removed


def kernel_manager_class():
    """A Jupyter kernel manager that talks to its kernel over Unix sockets (IPC), not TCP.

    With TCP, jupyter_client picks free ports, closes them and hands them to the kernel;
    another process can take one in between (jupyter_client issue 487). The kernel then
    runs without its heartbeat, and papermill can hang at its shutdown after the last
    cell, stopping a long grid. IPC sockets are files in a private temporary folder, so
    nothing can race for them. Returns None (papermill's TCP default) on Windows.
    """
    if os.name == "nt":
        return None
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _private_ipc_path(self) -> str:
            folder = Path(tempfile.mkdtemp(prefix=KERNEL_PREFIX))
            (folder / "owner").write_text(str(os.getpid()))  # see remove_orphan_kernels
            return str(folder / "kernel")

        @default("connection_file")
        def _private_connection_file(self) -> str:
            # in the private folder too, not loose in the system's temporary folder
            return str(Path(self.ip).parent / "connection.json")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts the kernel before every shutdown; papermill shuts
            # down an idle kernel, whose SIGINT handler then logs a spurious
            # "ERROR | KeyboardInterrupt caught in kernel". A kernel that does not stop
            # on the shutdown request is still killed after the usual wait.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        def cleanup_ipc_files(self) -> None:
            super().cleanup_ipc_files()  # the socket files, then their private folder
            folder = Path(self.ip).parent
            if folder.name.startswith(KERNEL_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)

    return IPCKernelManager


def execute_notebook(notebook, output, parameters: dict, **kwargs):
    """``papermill.execute_notebook`` with the kit's IPC kernel manager (see
    :func:`kernel_manager_class`); ``kwargs`` go to papermill."""
    import papermill as pm

    manager = kernel_manager_class()
    if manager is not None:
        kwargs.setdefault("kernel_manager_class", manager)
    # Absolute paths: papermill changes the process's working folder while a notebook
    # runs (``cwd``), which other threads of a parallel grid would otherwise follow.
    if kwargs.get("cwd") is not None:
        kwargs["cwd"] = str(Path(kwargs["cwd"]).resolve())
    return pm.execute_notebook(
        str(Path(notebook).resolve()),
        str(Path(output).resolve()),
        parameters=parameters,
        **kwargs,
    )


def _summary(out: Path, name: str) -> Path:
    """A point's evaluation summary; it exists once the point is done."""
    return out / "runs" / name / "eval" / "test" / "summary.csv"


def _evaluated(out: Path, points: list[dict]):
    """``(params, summary table)`` of every point of ``points`` evaluated under ``out``."""
    for params in points:
        path = _summary(out, params["name"])
        if path.exists():
            yield params, pd.read_csv(path)


def reproduce(
    grid: Grid | str = "default",
    *,
    out: str | os.PathLike = "outputs/reproduce",
    notebook: str | os.PathLike = NOTEBOOK,
    kernel_name: str = "python3",
    progress: bool = True,
    jobs: int = 1,
    log=print,
) -> dict[str, Path]:
    """Execute the grid (skipping finished points) and gather its results.

    Args:
        jobs: points executed at once, each in its own kernel with ``cpu_count // jobs``
            torch threads (at least 1); see :func:`auto_jobs`.

    Returns:
        Paths of the executed notebooks folder, the runs folder, ``summary.csv``,
        ``summary.md``, the summary figure and, where baseline and PASSION share seeds,
        the paired effect (``effect.csv``, ``effect.md``, ``effect.png``).
    """
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; expected one of {sorted(GRIDS)}")
        grid = GRIDS[grid]
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    # Absolute paths throughout: each notebook runs with the process's working folder
    # changed to its own (papermill), and the points of a parallel grid overlap.
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(
            f"{notebook} not found: reproduce runs the notebooks of a source checkout "
            f"(git clone, then pip install -e .)"
        )
    out = Path(out).resolve()
    remove_orphan_kernels()  # left by a grid that was killed
    points = grid_points(grid)
    for params in points:  # a point's name becomes its notebook's and run's folder names
        inside(out, "runs", check_name(params["name"], "a grid point's name"), what="the run")
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    start_dir = os.getcwd()
    todo = []
    for i, params in enumerate(points, 1):
        _check_same_point(out / "notebooks" / f"{params['name']}.ipynb", params)
        if _summary(out, params["name"]).exists():
            log(f"[{i}/{len(points)}] {params['name']}: done already, skipped")
        else:
            todo.append((i, params))
    jobs = min(jobs, max(1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    if jobs > 1:
        _prepare_data(todo, notebook)  # once, before kernels that would race to write it

    def run(item: tuple[int, dict]) -> None:
        i, params = item
        name = params["name"]
        executed = out / "notebooks" / f"{name}.ipynb"
        log(f"[{i}/{len(points)}] {name}: running {notebook.name}")
        started = time.perf_counter()
        parameters = {**params, "run_dir": str((out / "runs").resolve())}
        if threads:
            parameters["threads"] = threads
        for attempt in (1, 2):
            try:
                execute_notebook(
                    notebook,
                    executed,
                    parameters,
                    kernel_name=kernel_name,
                    progress_bar=progress and jobs == 1,
                    cwd=str(notebook.parent),
                )
                break
            except Exception as exc:  # noqa: BLE001 - a kernel can fail to start once
                if attempt == 2:
                    raise
                # Rarely a kernel dies at its start; the notebook resumes a run it began.
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                log(f"[{i}/{len(points)}] {name}: {type(exc).__name__} {first}; running it again")
        log(f"[{i}/{len(points)}] {name}: finished in {time.perf_counter() - started:.0f} s")

    if jobs == 1:
        for item in todo:
            run(item)
    else:
        from concurrent.futures import ThreadPoolExecutor

        log(f"{len(todo)} points, {jobs} at a time with {threads} torch thread(s) each")
        # The longer points first (a baseline is the cheapest objective), so that the last
        # ones to finish are short and run side by side.
        todo.sort(key=lambda item: item[1].get("objective") == "baseline")
        try:
            with ThreadPoolExecutor(jobs) as pool:
                for future in [pool.submit(run, item) for item in todo]:
                    future.result()  # the first failure stops the grid with its error
        finally:
            # Overlapping notebooks restore each other's working folder out of order.
            os.chdir(start_dir)
    return gather(out, points)


# Parameters that say where or on what a point runs, not what it computes.
_PLACE = {"run_dir", "device", "threads"}
# A point without a training-setting dimension runs the notebook's default, IDT.
_DEFAULTS = {"setting": "idt"}


def _as_json(value):
    """``value`` as a notebook's metadata stores it (tuples as lists, ...)."""
    return json.loads(json.dumps(value, default=str))


def _check_same_point(executed: Path, params: dict) -> None:
    """Refuse to reuse a point that an earlier grid ran with other settings.

    The executed notebook records the parameters papermill gave it (``smoke``,
    ``data_root``, ``epochs``, ...); a point counts as done only for its own.
    """
    if not executed.is_file():
        return
    try:
        import nbformat

        ran = nbformat.read(executed, as_version=4).metadata["papermill"]["parameters"]
    except Exception:  # noqa: BLE001 - an unreadable notebook: run the point again
        return
    differ = sorted(
        key
        for key in (set(ran) | set(params)) - _PLACE
        if _as_json(ran.get(key, _DEFAULTS.get(key)))
        != _as_json(params.get(key, _DEFAULTS.get(key)))
    )
    if differ:
        shown = ", ".join(f"{k}: {ran.get(k)!r} there, {params.get(k)!r} now" for k in differ)
        raise ValueError(
            f"{executed} ran this point with other settings ({shown}); choose another --out "
            f"or delete that point's notebook and run"
        )


def auto_jobs(grid: Grid) -> int:
    """Points to run at once: one more than the CPU cores for a CPU grid (the ``cpu``
    preset, no GPU) on a machine with at least 2 cores, else 1 (one GPU is best used by
    one run at a time).

    Single-threaded runs side by side use the cores best (small 3-D convolutions use a
    second thread poorly); one run more than cores keeps every core busy to the end when
    the points differ in length (on 2 cores, three runs at a time made as many steps per
    second as two).
    """
    import torch

    cpu = grid.parameters.get("preset") == "cpu" and grid.parameters.get("device", "auto") in (
        "auto",
        "cpu",
    )
    if not cpu or (torch.cuda.is_available() and grid.parameters.get("device") != "cpu"):
        return 1
    cores = os.cpu_count() or 1
    return cores + 1 if cores >= 2 else 1


def _prepare_data(todo: list[tuple[int, dict]], notebook: Path) -> None:
    """Generate the built-in phantom of every pending point, as its notebook would."""
    import inspect

    import papermill as pm

    from passion_kit.config import notebook_config
    from passion_kit.engine.runs import ensure_data

    accepted = set(inspect.signature(notebook_config).parameters)
    defaults = {
        name: ast.literal_eval(info["default"])
        for name, info in pm.inspect_notebook(str(notebook)).items()
        if name in accepted
    }
    done = set()
    for _, params in todo:
        kwargs = defaults | {k: v for k, v in params.items() if k in accepted}
        if kwargs.get("dataset") != "phantom":
            continue
        if kwargs.get("data_root"):  # relative to the notebook's folder, its working directory
            kwargs["data_root"] = str((notebook.parent / kwargs["data_root"]).resolve())
        cfg = notebook_config(**kwargs)
        root = cfg.dataset_root()
        if root not in done:
            ensure_data(cfg, root)
            done.add(root)


def gather(out: str | os.PathLike, points: list[dict]) -> dict[str, Path]:
    """Collect every point's summary into one table and one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = []
    for params, summary in _evaluated(out, points):
        mean = summary[summary["combination"] == "mean"].iloc[0]
        dice = {c.removeprefix("dice_"): mean[c] for c in summary.columns if c.startswith("dice_")}
        keys = ("backbone", "objective", "missing_rates", "seed")
        # the setting names a point too: the imbalance grid's IDT and PDT runs never pool
        setting = {"setting": params.get("setting", "idt")}  # idt: the notebook's default
        rows.append({k: params[k] for k in keys} | setting | dice)
    if not rows:
        raise RuntimeError(f"no finished point under {out / 'runs'}")
    table = pd.DataFrame(rows)
    named = ("backbone", "objective", "missing_rates", "setting", "seed")
    regions = [c for c in table.columns if c not in named]
    by = ["backbone", "missing_rates", "setting", "objective"]
    mean = table.groupby(by, sort=False)[regions].agg(["mean", "std", "count"]).reset_index()
    mean.columns = [" ".join(c).strip() if isinstance(c, tuple) else c for c in mean.columns]
    paths = {
        "notebooks": out / "notebooks",
        "runs": out / "runs",
        "table": out / "summary.csv",
        "seeds": out / "summary_over_seeds.csv",
        "markdown": out / "summary.md",
        "figure": out / "summary.png",
    }
    atomic_write_text(paths["table"], table.to_csv(index=False))
    atomic_write_text(paths["seeds"], mean.to_csv(index=False))
    compact = mean[by].copy()
    compact["seeds"] = mean[f"{regions[0]} count"].astype(int)
    for region in regions:
        m, sd = mean[f"{region} mean"], mean[f"{region} std"]
        compact[region] = [
            f"{a:.3f}" if pd.isna(b) else f"{a:.3f} ± {b:.3f}" for a, b in zip(m, sd, strict=True)
        ]
    lines = [
        "# Reproduction summary",
        "",
        "Mean Dice over every modality combination (test split), per run:",
        "",
        markdown_table(table),
        "",
        "Over seeds (mean ± sample standard deviation):",
        "",
        markdown_table(compact),
    ]
    atomic_write_text(paths["markdown"], "\n".join(lines) + "\n")
    labels = [" / ".join(str(v) for v in row[by]) for _, row in mean.iterrows()]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(labels) * len(regions) / 3, 3.2))
    width = 0.8 / len(regions)
    for j, region in enumerate(regions):
        xs = [i + j * width for i in range(len(labels))]
        ax.bar(
            xs, mean[f"{region} mean"], width, yerr=mean[f"{region} std"].fillna(0), label=region
        )
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=20, ha="right"
    )
    ax.set_ylabel("mean Dice over combinations")
    ax.set_ylim(0, 1)
    ax.legend(ncols=len(regions), fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["figure"], dpi=120)
    plt.close(fig)
    paths.update(_comparison_figures(out, points))
    comparisons = {
        "effect": paired_effect(out, points),  # PASSION minus baseline
        "gap": paired_effect(out, points, treatment="idt", control="pdt", by="setting"),
    }
    for stem, effect in comparisons.items():
        if effect.empty:
            continue
        paths[stem] = out / f"{stem}.csv"
        paths[f"{stem}_markdown"] = out / f"{stem}.md"
        paths[f"{stem}_figure"] = out / f"{stem}.png"
        atomic_write_text(paths[stem], effect.to_csv(index=False))
        atomic_write_text(paths[f"{stem}_markdown"], format_effect(effect, markdown=True))
        _close(plot_effect(effect, path=paths[f"{stem}_figure"]))
    return paths


def run_machines(out: str | os.PathLike, points: list[dict]) -> list[str]:
    """The distinct machine lines (CPU or GPU, kernels, precision) that the grid's runs
    recorded in their ``meta.json``, in the order of the points."""
    import json

    lines: list[str] = []
    for params in points:
        meta = Path(out) / "runs" / params["name"] / "meta.json"
        if meta.is_file():
            line = json.loads(meta.read_text()).get("machine", "not recorded (an earlier kit)")
            if line not in lines:
                lines.append(line)
    return lines


def run_overview(out: str | os.PathLike, points: list[dict]) -> pd.DataFrame:
    """One row per evaluated point: Dice with every modality present and the mean over the
    combinations per region, and at the last epoch the largest and smallest beta (or
    balancing coefficient) with their modalities."""
    out = Path(out)
    rows = []
    for p, summary in _evaluated(out, points):
        path = _summary(out, p["name"])
        regions = [c.removeprefix("dice_") for c in summary.columns if c.startswith("dice_")]
        regions = [r for r in regions if not r.endswith("Pro")]
        full = summary[summary["combination"] != "mean"].iloc[-1]  # every modality present
        mean = summary[summary["combination"] == "mean"].iloc[0]
        row = {"objective": p["objective"], "setting": p.get("setting", "idt"), "seed": p["seed"]}
        row |= {f"all {r}": float(full[f"dice_{r}"]) for r in regions}
        row |= {f"mean {r}": float(mean[f"dice_{r}"]) for r in regions}
        history = path.parents[2] / "history_modality.csv"
        if history.exists():
            h = pd.read_csv(history)
            column = next((c for c in ("beta", "coefficient") if c in h.columns), None)
            if column is not None and p["objective"] != "baseline":
                last = h[h["epoch"] == h["epoch"].max()].set_index("modality")[column]
                row["beta max"] = f"{last.max():.2f} ({last.idxmax()})"
                row["beta min"] = f"{last.min():.2f} ({last.idxmin()})"
        rows.append(row)
    return pd.DataFrame(rows)


def _t975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def paired_effect(
    out: str | os.PathLike,
    points: list[dict],
    *,
    treatment: str = "passion",
    control: str = "baseline",
    by: str = "objective",
) -> pd.DataFrame:
    """Treatment minus control per combination and region, paired by seed.

    ``by`` names what differs between the two: ``"objective"`` (PASSION against the
    baseline) or ``"setting"`` (e.g. ``treatment="idt", control="pdt"``: what the
    imbalanced missing rates cost). For every (backbone, missing rates, and the other of
    objective and setting) with both evaluated for the same seeds: per seed, the
    difference of the two runs' Dice (mean over test cases) for each combination and
    region; then the mean over seeds and its 95 % confidence interval
    ``mean ± t(0.975, n-1) sd / sqrt(n)`` (no interval with one seed). The last row of
    each group is the mean over combinations. ``verdict`` per region: ``better`` when
    the interval lies above 0, ``worse`` below 0, else ``unclear``.

    Returns:
        One row per (backbone, missing_rates, the other key, combination) with
        ``<region> mean``, ``<region> low``, ``<region> high`` and ``<region> verdict``,
        plus ``seeds``, ``treatment`` and ``control``; empty when no pair is evaluated.
    """
    import numpy as np

    if by not in ("objective", "setting"):
        raise ValueError(f"by must be 'objective' or 'setting', got {by!r}")
    other = "setting" if by == "objective" else "objective"

    def value(p: dict, key: str) -> str:
        return p.get(key, "idt") if key == "setting" else p[key]  # idt: the notebook's

    out = Path(out)
    runs: dict[tuple, dict[str, dict[int, pd.DataFrame]]] = {}
    for p in points:
        if value(p, by) not in (treatment, control) or not _summary(out, p["name"]).exists():
            continue
        table = pd.read_csv(_summary(out, p["name"])).set_index("combination")
        key = (p["backbone"], p["missing_rates"], value(p, other))
        runs.setdefault(key, {}).setdefault(value(p, by), {})[p["seed"]] = table
    rows = []
    for (backbone, rates, kept), by_objective in runs.items():
        seeds = sorted(set(by_objective.get(treatment, {})) & set(by_objective.get(control, {})))
        if not seeds:
            continue
        first = by_objective[treatment][seeds[0]]
        regions = [c.removeprefix("dice_") for c in first.columns if c.startswith("dice_")]
        # ETPro is a post-processed ET (BraTS's 500-voxel rule): not a region of its own
        regions = [r for r in regions if not r.endswith("Pro")]
        for combination in first.index:
            row = {"backbone": backbone, "missing_rates": rates, other: kept}
            row |= {"combination": combination, "seeds": len(seeds)}
            row |= {"treatment": treatment, "control": control}
            for region in regions:
                diff = np.array(
                    [
                        by_objective[treatment][s].loc[combination, f"dice_{region}"]
                        - by_objective[control][s].loc[combination, f"dice_{region}"]
                        for s in seeds
                    ],
                    dtype=float,
                )
                mean = float(diff.mean())
                if len(diff) > 1:
                    half = _t975(len(diff) - 1) * float(diff.std(ddof=1)) / len(diff) ** 0.5
                    low, high = mean - half, mean + half
                else:
                    low = high = float("nan")
                verdict = "better" if low > 0 else "worse" if high < 0 else "unclear"
                row |= {
                    f"{region} mean": mean,
                    f"{region} low": low,
                    f"{region} high": high,
                    f"{region} verdict": verdict,
                }
            rows.append(row)
    return pd.DataFrame(rows)


def format_effect(effect: pd.DataFrame, *, markdown: bool = False) -> str:
    """The paired effect as a table (text for a terminal, or Markdown), with a verdict line
    per region: which combinations the treatment improves and which it makes worse."""
    regions = [c.removesuffix(" mean") for c in effect.columns if c.endswith(" mean")]
    other = "setting" if "setting" in effect.columns else "objective"
    blocks = []
    for (backbone, rates, kept), part in effect.groupby(
        ["backbone", "missing_rates", other], sort=False
    ):
        n = int(part["seeds"].iloc[0])
        title = (
            f"{_label(part['treatment'].iloc[0])} minus {_label(part['control'].iloc[0])}, "
            f"Dice per combination ({backbone}, {rates}, {kept}, {n} seed"
            f"{'s' if n > 1 else ''} paired; mean [95 % interval])"
        )

        def cell(row, region):
            mean, low, high = (row[f"{region} {k}"] for k in ("mean", "low", "high"))
            if pd.isna(low):
                return f"{mean:+.3f}"
            mark = {"better": "+", "worse": "-"}.get(row[f"{region} verdict"], " ")
            return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"

        header = ["combination", *regions]
        body = [
            [row["combination"], *(cell(row, r) for r in regions)] for _, row in part.iterrows()
        ]
        if markdown:
            lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
        else:
            widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
            lines = [title]
            lines += [
                "  ".join(
                    str(c).ljust(w) if i == 0 else str(c).rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
                for r in [header, *body]
            ]
        lines.append("")
        combos = part[part["combination"] != "mean"]
        for region in regions:
            better = combos.loc[combos[f"{region} verdict"] == "better", "combination"].tolist()
            worse = combos.loc[combos[f"{region} verdict"] == "worse", "combination"].tolist()
            lines.append(
                f"{region}: better in {len(better)} of {len(combos)} combinations"
                f"{' (' + ', '.join(better) + ')' if better else ''}; worse in {len(worse)}"
                f"{' (' + ', '.join(worse) + ')' if worse else ''}"
            )
        if n < 2:
            lines.append("(one seed: no interval; run more seeds for a verdict)")
        else:
            lines.append("+ / -: the 95 % interval lies above / below 0 (better / worse)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _label(name: str) -> str:
    return {"passion": "PASSION", "idt": "IDT", "pdt": "PDT", "idt_drop": "IDT-drop"}.get(
        name, name
    )


def plot_effect(effect: pd.DataFrame, *, path: str | os.PathLike | None = None):
    """Bars of the paired mean difference per combination and region, with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    regions = [c.removesuffix(" mean") for c in effect.columns if c.endswith(" mean")]
    other = "setting" if "setting" in effect.columns else "objective"
    groups = list(effect.groupby(["backbone", "missing_rates", other], sort=False))
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.4 * len(groups)), squeeze=False)
    for ax, ((backbone, rates, kept), part) in zip(axes[:, 0], groups, strict=True):
        x = np.arange(len(part))
        width = 0.8 / len(regions)
        for j, region in enumerate(regions):
            mean = part[f"{region} mean"].to_numpy()
            err = np.vstack([mean - part[f"{region} low"], part[f"{region} high"] - mean])
            err = np.nan_to_num(err)
            ax.bar(x + j * width, mean, width, yerr=err, capsize=2, label=region)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(x + 0.4 - width / 2, part["combination"], rotation=40, ha="right")
        ax.set_ylabel("Dice difference")
        n = int(part["seeds"].iloc[0])
        ax.set_title(
            f"{_label(part['treatment'].iloc[0])} minus {_label(part['control'].iloc[0])}, "
            f"{backbone}, {rates}, {kept}: mean over {n} paired seed(s), 95 % interval",
            fontsize=10,
        )
        ax.legend(ncols=len(regions), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _comparison_figures(out: Path, points: list[dict]) -> dict[str, Path]:
    """Per setting: baseline vs PASSION side by side (preference dynamics, 15-combination
    Dice), and with more objectives, all of their per-modality dynamics in one figure."""
    from passion_kit.lessons.viz import plot_dice_heatmap, plot_preference

    runs: dict[tuple, dict[str, Path]] = {}
    for p in points:
        if _summary(out, p["name"]).exists():
            key = (p["backbone"], p["missing_rates"], p["seed"])
            runs.setdefault(key, {})[p["objective"]] = out / "runs" / p["name"]
    figures = {}
    for (backbone, rates, seed), by_objective in runs.items():
        stem = f"{backbone}_{rates}_s{seed}"
        if len(by_objective) > 2:  # every objective's per-modality dynamics side by side
            path = out / "figures" / f"dynamics_{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _close(plot_preference(by_objective, path=path))
            figures[f"dynamics {stem}"] = path
        if not {"baseline", "passion"} <= set(by_objective):
            continue
        pair = {"baseline": by_objective["baseline"], "PASSION": by_objective["passion"]}
        figures[f"preference {stem}"] = out / "figures" / f"preference_{stem}.png"
        figures[f"dice {stem}"] = out / "figures" / f"dice_{stem}.png"
        figures[f"preference {stem}"].parent.mkdir(parents=True, exist_ok=True)
        _close(plot_preference(pair, path=figures[f"preference {stem}"]))
        _close(plot_dice_heatmap(pair, path=figures[f"dice {stem}"]))
    return figures


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def with_overrides(grid: Grid, **dimensions) -> Grid:
    """A copy of ``grid`` with some dimensions replaced (``None`` keeps them)."""
    return replace(grid, **{k: v for k, v in dimensions.items() if v is not None})

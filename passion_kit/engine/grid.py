"""A reproduction grid's points and the run name each point gets.

A grid is backbone x objective x missing-rate split x seed (x training setting), with
notebook parameters every point shares; :func:`point_name` says under which name a grid,
the main job included, keeps a point's run (``<run_dir>/<name>``), so the lessons can
find the main job's runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

__all__ = ["Grid", "grid_points", "point_name"]


@dataclass
class Grid:
    """The dimensions of a reproduction grid and the parameters every point shares."""

    backbones: list[str] = field(default_factory=lambda: ["rfnet"])
    objectives: list[str] = field(default_factory=lambda: ["baseline", "passion"])
    missing_rates: list[str] = field(default_factory=lambda: ["mr2468"])
    seeds: list[int] = field(default_factory=lambda: [0])
    parameters: dict = field(default_factory=dict)  # shared notebook parameters
    # training settings (idt, pdt, idt_drop) as a dimension; None: the parameters' (or idt)
    settings: list[str] | None = None


# Shared parameters that do not change what is trained (or are in the name already).
_UNNAMED = {"preset", "dataset", "data_root", "smoke", "device", "run_dir"}


def grid_points(grid: Grid) -> list[dict]:
    """One parameter dict per point, with a unique ``name``."""
    points = []
    for backbone, objective, rates, seed, setting in itertools.product(
        grid.backbones, grid.objectives, grid.missing_rates, grid.seeds, grid.settings or [None]
    ):
        params = dict(grid.parameters)
        params.update(backbone=backbone, objective=objective, missing_rates=rates, seed=seed)
        dataset = params.get("dataset", "data")
        # Parameters that change the result name the run, so a changed grid never
        # mistakes an old run for its own (e.g. epochs=40 -> ..._epochs40).
        extra = "".join(
            f"_{key}{value}"
            for key, value in sorted(grid.parameters.items())
            if key not in _UNNAMED
        )
        if setting is not None:  # idt keeps the plain name: the main job's runs are reused
            params["setting"] = setting
            extra += "" if setting == "idt" else f"_{setting}"
        params["name"] = f"{dataset}_{backbone}_{objective}_{rates}_s{seed}{extra}"
        points.append(params)
    return points


def point_name(
    objective: str,
    *,
    backbone: str = "rfnet",
    missing_rates: str = "mr2468",
    seed: int = 0,
    **parameters,
) -> str:
    """The run name a grid gives a point, e.g. the main job's PASSION run of seed 0:
    ``point_name("passion", preset="cpu", dataset="phantom")``. ``parameters`` are the
    grid's shared notebook parameters (those that change the result name the run)."""
    grid = Grid(
        backbones=[backbone],
        objectives=[objective],
        missing_rates=[missing_rates],
        seeds=[seed],
        parameters=parameters,
    )
    return grid_points(grid)[0]["name"]

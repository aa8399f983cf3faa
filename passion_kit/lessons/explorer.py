"""The missing-modality explorer: toggle modalities, see the segmentation and its Dice change.

:class:`MissingModalityExplorer` shows one checkbox per modality, a case picker, plane and
slice controls and a region selector. Toggling a modality re-predicts the case with
exactly the checked subset from a trained checkpoint and updates the overlay and the
Dice of that subset (next to the Dice with every modality). A second tab shows the case in
3-D (:class:`passion_kit.lessons.viewer3d.CaseView3D`, NiiVue) with the label and the same
prediction as overlays; it is built when first opened. Each case is encoded once
(:class:`CachedCase` keeps the encoder features of every sliding window); a toggle only
runs the fusion decoder, and a subset seen before is answered from memory.

The explorer can open any run directory. Without one, it opens the small checkpoint that
ships inside the package (:func:`shipped_explorer_run`, under 10 MB, fp16 weights): the
``cpu`` preset's PASSION run of seed 0 on the built-in phantom, the run of the main job
(``python -m passion_kit reproduce``) with that seed. This one-line command makes it
again from scratch (:func:`explorer_command`)::

    python -m passion_kit explorer-checkpoint --out passion_kit/resources/explorer

which trains ``python -m passion_kit train --preset cpu train.seed=0 train.name=explorer``
(:func:`explorer_config`) and packs the run's weights, config and history
(:func:`pack_explorer_checkpoint`). ``smoke=True`` trains a 4-step checkpoint instead,
seconds, for tests.

Usage (JupyterLab)::

    from passion_kit.lessons.explorer import MissingModalityExplorer, explorer_run
    explorer = MissingModalityExplorer(explorer_run(data_root="data"), device="cpu")  # seconds
    explorer                                   # the widget
    explorer.set_modalities(["t1c", "t2"])     # the same as clicking
    explorer.dice, explorer.prediction, explorer.message
    explorer.views.selected_index = 1         # the 3-D tab (needs ipyniivue and WebGL2)
"""

from __future__ import annotations

import html
import json
import os
import shlex
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from passion_kit.config import PLACE_KEYS, ExperimentConfig
from passion_kit.data import PreparedDataset
from passion_kit.engine.evaluate import dice, load_run
from passion_kit.lessons.viewer3d import CaseView3D, niivue_missing
from passion_kit.lessons.viz import PLANES, figure_png, plot_case, tumour_centre
from passion_kit.models import Backbone

__all__ = [
    "AMP",
    "CachedCase",
    "MissingModalityExplorer",
    "SHIPPED_EXPLORER",
    "VIEW_TABS",
    "explorer_command",
    "explorer_config",
    "explorer_overrides",
    "explorer_run",
    "pack_explorer_checkpoint",
    "shipped_explorer_run",
]

VIEW_TABS = ("2-D slices", "3-D view")  # the explorer's tabs; the 2-D one is the default
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # the fixed axis of (H, W, D)
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SHIPPED_EXPLORER = Path(__file__).resolve().parents[1] / "resources" / "explorer"
# The files of a packed explorer checkpoint (see pack_explorer_checkpoint).
_PACKED = ("checkpoint.pt", "config.json", "history_epoch.csv", "history_modality.csv")


def explorer_overrides(data_root: str | os.PathLike = "data", *, smoke: bool = False) -> list[str]:
    """The ``section.key=value`` overrides of the cpu preset that make the explorer's run.

    The full run is the cpu preset's PASSION run of seed 0 on the built-in phantom (the
    main job's run of that seed). ``smoke`` trains 4 iterations on a tiny phantom of its
    own: a checkpoint that predicts something, not a good one.
    """
    if smoke:
        return [
            f"data.root={Path(data_root) / 'phantom_explorer_smoke'}",
            "data.phantom_cases=8",
            "data.phantom_size=48",
            "data.patch_size=16",
            "eval.window=48",
            "train.epochs=1",
            "train.iterations_per_epoch=4",
            "train.name=explorer_smoke",
        ]
    return [
        f"data.root={Path(data_root) / 'phantom'}",
        "objective.name=passion",
        "train.seed=0",
        "train.name=explorer",
    ]


def explorer_config(
    data_root: str | os.PathLike = "data",
    run_dir: str | os.PathLike = "runs",
    *,
    smoke: bool = False,
    device: str = "auto",
) -> ExperimentConfig:
    """The explorer's training config: the ``cpu`` preset plus :func:`explorer_overrides`."""
    extra = [f"train.run_dir={run_dir}", f"train.device={device}", "train.progress=false"]
    return ExperimentConfig.preset("cpu").override(
        explorer_overrides(data_root, smoke=smoke) + extra
    )


def explorer_command(
    data_root: str | os.PathLike = "data",
    run_dir: str | os.PathLike = "runs",
    *,
    smoke: bool = False,
) -> str:
    """The shell command that trains the explorer's run (what :func:`explorer_config` holds;
    ``python -m passion_kit explorer-checkpoint`` trains this run and packs it)."""
    args = explorer_overrides(data_root, smoke=smoke) + [f"train.run_dir={run_dir}"]
    return shlex.join(["python", "-m", "passion_kit", "train", "--preset", "cpu", *args])


def pack_explorer_checkpoint(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Pack a finished run into the explorer's shipped files under ``out``.

    Writes ``checkpoint.pt`` (the weights in fp16 with the config, backbone and sizes:
    tensors, numbers, strings, lists and dicts only, so it loads with
    ``weights_only=True``), ``config.json`` and the two history tables. Where the run
    lives (data root, run folder, device) is left out of the packed config.
    """
    from passion_kit.engine.runs import load_checkpoint
    from passion_kit.io import atomic_torch_save, atomic_write_text

    run_dir, out = Path(run_dir), Path(out)
    state = load_checkpoint(run_dir / "checkpoint_last.pt")
    if state["epoch"] != state["config"]["train"]["epochs"]:
        raise ValueError(f"{run_dir} is not finished (epoch {state['epoch']})")
    config = {
        section: {k: v for k, v in values.items() if (section, k) not in PLACE_KEYS}
        for section, values in state["config"].items()
    }
    packed = {
        "format": 1,
        "epoch": state["epoch"],
        "config": config,
        "backbone": state["backbone"],
        "num_modalities": state["num_modalities"],
        "num_classes": state["num_classes"],
        "model": {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(packed, out / "checkpoint.pt")
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    for name in ("history_epoch.csv", "history_modality.csv"):
        atomic_write_text(out / name, (run_dir / name).read_text())
    return out


def shipped_explorer_run(
    data_root: str | os.PathLike = "data",
    run_dir: str | os.PathLike = "runs",
    *,
    source: str | os.PathLike = SHIPPED_EXPLORER,
) -> Path:
    """The shipped checkpoint as a run directory ``<run_dir>/explorer_shipped``, in seconds.

    Generates the phantom it was trained on under ``data_root`` where absent (about two
    seconds), then writes the run folder (``checkpoint_last.pt`` in fp32, ``config.json``
    with this machine's data root, the history tables) unless it is there already.
    """
    from passion_kit.engine.runs import ensure_data, load_checkpoint
    from passion_kit.io import atomic_torch_save, atomic_write_text

    source = Path(source)
    missing = [name for name in _PACKED if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: the shipped explorer files {missing} are missing")
    packed = load_checkpoint(source / "checkpoint.pt")
    cfg = ExperimentConfig.from_dict(packed["config"], source=str(source / "checkpoint.pt"))
    cfg.data.root = str(Path(data_root) / cfg.data.dataset)
    cfg.train.run_dir = str(run_dir)
    cfg.train.name = "explorer_shipped"
    ensure_data(cfg, cfg.dataset_root())
    run = Path(run_dir) / cfg.train.name
    last = run / "checkpoint_last.pt"
    if not last.exists() or json.loads((run / "config.json").read_text()) != cfg.to_dict():
        run.mkdir(parents=True, exist_ok=True)
        for name in ("history_epoch.csv", "history_modality.csv"):
            atomic_write_text(run / name, (source / name).read_text())
        atomic_write_text(run / "config.json", cfg.to_json())
        model = {k: v.float() if v.is_floating_point() else v for k, v in packed["model"].items()}
        atomic_torch_save(packed | {"config": cfg.to_dict(), "model": model}, last)
    return run


def explorer_run(
    data_root: str | os.PathLike = "data",
    run_dir: str | os.PathLike = "runs",
    *,
    smoke: bool = False,
    device: str = "auto",
    train: bool = False,
) -> Path:
    """The explorer's run directory.

    By default the shipped checkpoint (:func:`shipped_explorer_run`): nothing is trained.
    ``train=True`` trains the explorer's run here with :func:`explorer_config` (or reloads
    it when finished; the same as running :func:`explorer_command`); ``smoke=True``
    trains the 4-step smoke run (tests).
    """
    from passion_kit.engine.train import fit

    if smoke or train:
        return fit(explorer_config(data_root, run_dir, smoke=smoke, device=device))
    return shipped_explorer_run(data_root, run_dir)


class CachedCase:
    """One case: encoder features per sliding window computed once, predictions per subset.

    The windows, their overlap and the averaging are MONAI's, as in
    :func:`passion_kit.engine.evaluate.predict_case`, so a prediction equals the evaluation's
    (in fp32; under bf16 it equals ``predict_case`` of that one mask, and the evaluation,
    which fuses 15 masks per call, may differ in a few voxels).

    Args:
        backbone: a trained backbone in eval mode.
        image: (M, H, W, D) the case with every modality.
        window: sliding-window size.
        overlap: sliding-window overlap.
        device: where the backbone runs.
        amp: ``"off"`` (fp32), ``"bf16"`` or ``"fp16"`` (CUDA) autocast. On a CPU with
            bf16 units the decoder pass of a 48^3 case took 0.1-0.2 s in bf16 instead of
            0.2-0.4 s in fp32 on 2 idle cores, and 0.3 s instead of 3 s on 2 busy ones;
            about 0.5 % of the voxels may differ between the two.
    """

    def __init__(
        self,
        backbone: Backbone,
        image: torch.Tensor,
        *,
        window: Sequence[int],
        overlap: float,
        device: torch.device | str = "cpu",
        amp: str = "off",
    ) -> None:
        if amp not in AMP:
            raise ValueError(f"amp must be one of {sorted(AMP)}, got {amp!r}")
        if image.dim() != 4 or image.shape[0] != backbone.num_modalities:
            raise ValueError(
                f"image must be (M={backbone.num_modalities}, H, W, D), got {tuple(image.shape)}"
            )
        self.backbone = backbone
        self.image = image
        self.window = tuple(window)
        self.overlap = overlap
        self.device = torch.device(device)
        self.amp = amp
        self.encode_calls = 0
        self._features: dict[tuple, list[torch.Tensor]] = {}
        self._predictions: dict[tuple[bool, ...], np.ndarray] = {}

    def _window(self, window: torch.Tensor, coords, rows: torch.Tensor) -> torch.Tensor:
        key = tuple((s.start, s.stop) for s in coords[0][2:])  # the window's place
        dtype = AMP[self.amp]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            if key not in self._features:
                self._features[key] = self.backbone.encode(window)
                self.encode_calls += 1
            logits = self.backbone.fuse(self._features[key], rows).logits
        return F.softmax(logits.float(), 1)

    @torch.no_grad()
    def predict(self, mask: Sequence[bool]) -> np.ndarray:
        """Arg-max labels (H, W, D) with exactly the modalities where ``mask`` is True."""
        from monai.inferers import sliding_window_inference

        key = tuple(bool(v) for v in mask)
        if len(key) != self.backbone.num_modalities or not any(key):
            raise ValueError(
                f"mask must hold {self.backbone.num_modalities} booleans, at least one True; "
                f"got {mask!r}"
            )
        if key not in self._predictions:
            rows = torch.tensor([key], dtype=torch.bool, device=self.device)
            probs = sliding_window_inference(
                self.image.unsqueeze(0).to(self.device),
                roi_size=self.window,
                sw_batch_size=1,
                predictor=partial(self._window, rows=rows),
                overlap=self.overlap,
                mode="constant",
                sw_device=self.device,
                device=self.device,
                with_coord=True,
            )  # (1, K, H, W, D)
            self._predictions[key] = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
        return self._predictions[key]


class MissingModalityExplorer:
    """Toggle modalities of a test case and watch a trained model's segmentation change.

    Args:
        run_dir: a run directory with ``checkpoint_last.pt`` (e.g. from :func:`explorer_run`).
        cases: case ids to offer (default: the run's test split).
        data_root: the prepared dataset (default: the one in the run's config).
        device: where the model runs (``auto``: cuda, then mps, then cpu).
        amp: ``"run"`` (the run's ``eval.amp``: the evaluation's predictions), ``"off"``
            (fp32), ``"bf16"`` or ``"fp16"``; see :class:`CachedCase`.
        max_cached_cases: cases whose encoder features stay in memory (the case picker
            re-encodes others). RFNet at width 8 keeps about 19 MB per 48^3 window: one
            window for a 48^3 case, 8 for a 64^3 case with the cpu preset's windows.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        cases: Sequence[str] | None = None,
        data_root: str | os.PathLike | None = None,
        device: str = "auto",
        amp: str = "run",
        max_cached_cases: int = 2,
    ) -> None:
        import ipywidgets as w

        if amp != "run" and amp not in AMP:
            raise ValueError(f"amp must be run or one of {sorted(AMP)}, got {amp!r}")
        if max_cached_cases < 1:
            raise ValueError(f"max_cached_cases must be >= 1, got {max_cached_cases}")
        loaded = load_run(run_dir, data_root=data_root, device=device)
        if amp == "run":
            amp = next(name for name, dtype in AMP.items() if dtype == loaded.amp)
        self.run_dir = Path(run_dir)
        self.backbone = loaded.backbone
        self.device = loaded.device
        self.description = loaded.description
        self.regions = dict(self.description.regions)
        self.names = tuple(self.description.modalities.modalities)
        cfg = loaded.cfg
        self._window, self._overlap = tuple(cfg.eval.window), cfg.eval.overlap
        self.dataset = PreparedDataset(loaded.root, cases or cfg.data.test_split, setting="full")
        if len(self.dataset) == 0:
            raise ValueError(f"cases: no case to explore in {loaded.root}")
        self.max_cached_cases = max_cached_cases
        self.amp = amp
        self._cache: OrderedDict[str, tuple[CachedCase, np.ndarray]] = OrderedDict()
        self._syncing = False
        self._message = ""
        self.last_update_s = 0.0

        self.checkboxes = {
            n: w.Checkbox(value=True, description=n, indent=False, layout=w.Layout(width="auto"))
            for n in self.names
        }
        self.case_picker = w.Dropdown(options=list(self.dataset.case_ids), description="case")
        self.plane_picker = w.ToggleButtons(options=list(PLANES), value="axial")
        self.slice_slider = w.IntSlider(description="slice", continuous_update=False)
        self.region_picker = w.ToggleButtons(options=["all", *self.regions], value="all")
        self.dice_html = w.HTML()
        self.message_html = w.HTML()
        self.image = w.Image(format="png")
        self.view3d: CaseView3D | None = None  # built when the 3-D tab is first opened
        self.view3d_note = w.HTML()
        self.view3d_box = w.VBox([self.view3d_note])
        self.views = w.Tab([self.image, self.view3d_box], titles=VIEW_TABS, selected_index=0)
        self.widget = w.VBox(
            [
                w.HBox([w.HTML("<b>modalities</b>"), *self.checkboxes.values()]),
                w.HBox([self.case_picker, self.plane_picker]),
                w.HBox([self.slice_slider, self.region_picker]),
                self.message_html,
                self.dice_html,
                self.views,
            ]
        )
        for box in self.checkboxes.values():
            box.observe(self._on_toggle, "value")
        self.case_picker.observe(lambda _: self._load_case(), "value")
        self.views.observe(lambda _: self._show_3d(), "selected_index")
        self.plane_picker.observe(lambda _: self._reset_slice(), "value")
        for control in (self.slice_slider, self.region_picker):
            control.observe(lambda _: self._render(), "value")
        self._load_case()

    # --- what tests and notebooks read ------------------------------------------------------
    @property
    def case_id(self) -> str:
        return self.case_picker.value

    @property
    def mask(self) -> tuple[bool, ...]:
        """The checked modalities as booleans in channel order."""
        return tuple(self.checkboxes[n].value for n in self.names)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the checked modalities."""
        return tuple(n for n in self.names if self.checkboxes[n].value)

    @property
    def cached(self) -> CachedCase:
        """The current case's feature cache."""
        return self._cache[self.case_id][0]

    @property
    def label(self) -> np.ndarray:
        """(H, W, D) ground truth of the current case."""
        return self._cache[self.case_id][1]

    @property
    def prediction(self) -> np.ndarray:
        """(H, W, D) labels predicted from the checked modalities."""
        return self.cached.predict(self.mask)

    @property
    def dice(self) -> dict[str, float]:
        """Dice per region of the shown prediction."""
        return self._dice(self.prediction)

    @property
    def message(self) -> str:
        """The message shown above the Dice ("" when all is well)."""
        return self._message

    def dice_table(self, subsets: Sequence[Sequence[str]] | None = None) -> pd.DataFrame:
        """Dice of the current case per modality subset (default: every combination), with a
        ``mean`` row last: the layout of ``summary.csv``, so :func:`viz.plot_dice_heatmap`
        draws it. Cheap: every subset reuses the cached encoder features."""
        ms = self.description.modalities
        if subsets is None:
            masks = [ms.mask(i) for i in range(ms.num_combinations)]
        else:
            masks = [tuple(n in s for n in self.names) for s in subsets]
        rows = []
        for mask in masks:
            mask_id = ms.mask_id(mask)  # an empty subset fails here, naming the problem
            scores = self._dice(self.cached.predict(mask))
            rows.append(
                {"mask_id": mask_id, "combination": ms.name(mask_id)}
                | {f"dice_{r}": v for r, v in scores.items()}
            )
        table = pd.DataFrame(rows)
        mean = {"mask_id": "", "combination": "mean"} | table.filter(like="dice_").mean().to_dict()
        return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)

    def set_modalities(self, names: Sequence[str]) -> bool:
        """Check exactly ``names`` (as a user would); False if refused (none named)."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"names: unknown modalities {unknown}; expected some of {self.names}")
        if not names:
            self._refuse()
            return False
        self._syncing = True
        try:
            for n, box in self.checkboxes.items():
                box.value = n in names
        finally:
            self._syncing = False
        self._update()
        return True

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # --- callbacks --------------------------------------------------------------------------
    def _dice(self, prediction: np.ndarray) -> dict[str, float]:
        return {
            r: dice(np.isin(prediction, c), np.isin(self.label, c)) for r, c in self.regions.items()
        }

    def _set_message(self, text: str) -> None:
        self._message = text
        style = "color:#b00020;font-weight:bold"
        self.message_html.value = (
            f'<span style="{style}">{html.escape(text)}</span>' if text else ""
        )

    def _refuse(self) -> None:
        self._set_message(
            "At least one modality must stay available: a segmentation from no modality is "
            "undefined. The last one stays checked."
        )

    def _on_toggle(self, change) -> None:
        if self._syncing:
            return
        if not any(self.mask):
            self._refuse()
            self._syncing = True
            try:
                change["owner"].value = True  # undo the click
            finally:
                self._syncing = False
            return
        self._update()

    def _load_case(self) -> None:
        case_id = self.case_id
        if case_id not in self._cache:
            sample = self.dataset[self.dataset.case_ids.index(case_id)]
            cached = CachedCase(
                self.backbone,
                sample["image"],
                window=self._window,
                overlap=self._overlap,
                device=self.device,
                amp=self.amp,
            )
            self._cache[case_id] = (cached, sample["label"].numpy())
            while len(self._cache) > self.max_cached_cases:
                self._cache.popitem(last=False)
        self._cache.move_to_end(case_id)
        self._centre = tumour_centre(self.label)
        self._reset_slice(render=False)
        self._update()

    def _reset_slice(self, render: bool = True) -> None:
        axis = _PLANE_AXIS[self.plane_picker.value]
        self._syncing = True  # one render, not one per slider attribute
        try:
            self.slice_slider.max = self.label.shape[axis] - 1
            self.slice_slider.value = self._centre[axis]
        finally:
            self._syncing = False
        if render:
            self._render()

    def _update(self) -> None:
        """Predict the checked subset, then show its Dice and overlay."""
        started = time.perf_counter()
        self._set_message("")
        self.dice_html.value = "<i>predicting ...</i>"
        prediction = self.prediction
        full = self._dice(self.cached.predict((True,) * len(self.names)))
        subset = self._dice(prediction)
        self._render()
        self._sync_3d()
        self.last_update_s = time.perf_counter() - started
        name = "+".join(self.modalities) if not all(self.mask) else "all modalities"
        cells = "".join(
            f"<td style='padding:0 8px'><b>{r}</b> {subset[r]:.3f} "
            f"<span style='color:#777'>(all {full[r]:.3f})</span></td>"
            for r in self.regions
        )
        self.dice_html.value = (
            f"<table><tr><td style='padding:0 8px'>Dice with <b>{html.escape(name)}</b>:</td>"
            f"{cells}</tr></table><small style='color:#777'>updated in "
            f"{self.last_update_s:.2f} s; case encoded {self.cached.encode_calls} "
            f"window(s) once</small>"
        )

    def _render(self) -> None:
        if self._syncing:
            return
        plane = self.plane_picker.value
        centre = list(self._centre)
        centre[_PLANE_AXIS[plane]] = self.slice_slider.value
        region = self.region_picker.value
        fig = plot_case(
            self.cached.image.numpy(),
            self.label,
            self.prediction,
            modalities=self.names,
            regions=self.regions,
            planes=[plane],
            centre=centre,
            available=self.mask,
            show_regions=None if region == "all" else [region],
            title=f"{self.case_id}: prediction from {'+'.join(self.modalities)}",
        )
        self.image.value = figure_png(fig, dpi=72)

    def _background(self) -> tuple[np.ndarray, str]:
        """The channel drawn under the overlays: the first checked one (as the 2-D view)."""
        channel = self.mask.index(True)
        return self.cached.image[channel].numpy(), self.names[channel]

    def _show_3d(self) -> None:
        """Build the 3-D view the first time its tab is opened (or say why there is none)."""
        if self.views.selected_index != 1 or self.view3d is not None:
            return
        missing = niivue_missing()
        if missing:
            self.view3d_note.value = html.escape(missing)
            return
        image, name = self._background()
        self.view3d = CaseView3D(
            image, self.label, self.prediction, regions=self.regions, name=name
        )
        self.view3d_note.value = (
            "<small>NiiVue: drag the volume to rotate it, click a plane to move the "
            "crosshair; the prediction follows the ticked modalities.</small>"
        )
        self.view3d_box.children = (self.view3d_note, self.view3d.widget)

    def _sync_3d(self) -> None:
        if self.view3d is not None:
            image, name = self._background()
            self.view3d.set_case(image, self.label, self.prediction, name=name)

"""What a run is made of: its folder's files, its model and objective (built from the
config, which :func:`check_config` checks before any work), its checkpoints, its data.

Training (:mod:`passion_kit.engine.train`), evaluation and the lessons all open runs
through these.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from passion_kit.config import ExperimentConfig
from passion_kit.fast import speed_up
from passion_kit.method.baseline import Deviations
from passion_kit.models import Backbone, build_backbone
from passion_kit.objectives import build_objective

__all__ = [
    "RunFiles",
    "build_model",
    "build_objective_from",
    "check_compatible",
    "check_config",
    "ensure_data",
    "eta_scale",
    "load_checkpoint",
]


class RunFiles:
    """Paths of a run directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.meta = self.root / "meta.json"
        self.last = self.root / "checkpoint_last.pt"
        self.history_epoch = self.root / "history_epoch.csv"
        self.history_modality = self.root / "history_modality.csv"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.root / f"checkpoint_epoch{epoch}.pt"

    def complete(self) -> bool:
        """True when the run trained all its epochs: its last checkpoint is there and its
        ``meta.json`` says ``complete``."""
        if not (self.last.is_file() and self.meta.is_file()):
            return False
        return json.loads(self.meta.read_text()).get("status") == "complete"


def build_model(cfg: ExperimentConfig, num_modalities: int, num_classes: int) -> Backbone:
    """The config's backbone, with the fast kernels swapped in if ``train.fast_kernels``."""
    backbone = build_backbone(
        cfg.model.backbone,
        num_modalities=num_modalities,
        num_classes=num_classes,
        width=cfg.model.width,
        patch_size=tuple(cfg.data.patch_size),
        **cfg.model.options,
    )
    return speed_up(backbone) if cfg.train.fast_kernels else backbone


# The config key a construction error is about, told by a word of its message.
_KEY_OF_ERROR = (
    ("model.options", "model.options"),
    ("objective.options", "objective.options"),
    ("unknown backbone", "model.backbone"),
    ("unknown objective", "objective.name"),
    ("width", "model.width"),
    ("patch_size", "data.patch_size"),
)  # anything else the model or objective refuses comes from its options


def check_config(cfg: ExperimentConfig) -> None:
    """Refuse, before any work, a config that could only fail later: every key's type and
    range, a phantom smaller than the patch, the device, and a model or objective that cannot
    be built (both are built on the meta device: no memory, no time). Raises
    :class:`~passion_kit.config.UsageError` naming the key."""
    from passion_kit.config import UsageError
    from passion_kit.engine.runtime import select_device

    cfg.validate()
    d = cfg.data
    if d.dataset == "phantom" and d.phantom_cases > 0 and max(d.patch_size) > d.phantom_size:
        raise UsageError(
            f"data.patch_size {tuple(d.patch_size)} is larger than the phantom's volume "
            f"(data.phantom_size={d.phantom_size}): lower it or raise data.phantom_size"
        )
    try:
        select_device(cfg.train.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for default_key, build in (
        ("model.options", lambda: build_model(cfg, 4, 4)),  # M, K change nothing checked
        ("objective.options", lambda: build_objective_from(cfg, 4, 4)),
    ):
        try:
            with torch.device("meta"):
                build()
        except ValueError as exc:
            message = str(exc)
            key = next((k for word, k in _KEY_OF_ERROR if word in message), default_key)
            raise UsageError(message if message.startswith(key) else f"{key}: {message}") from None


def build_objective_from(cfg: ExperimentConfig, num_modalities: int, num_classes: int):
    """The config's objective (``objective.*``), for a dataset of M modalities, K classes."""
    o = cfg.objective
    if o.name not in ("passion", "baseline"):
        options = dict(o.options)
        if o.name == "ogm_ge":
            options.setdefault("seed", cfg.train.seed)  # its gradient noise
        return _fast(
            cfg,
            build_objective(
                o.name, num_modalities=num_modalities, num_classes=num_classes, **options
            ),
        )
    official = Deviations.official(cfg.data.setting)
    deviations = Deviations(
        # "official": all four in PDT (the official HEAD), else the available
        students=official.students if o.students == "official" else o.students,
        reduction=o.reduction,
        skip_degenerate=o.skip_degenerate,
        exclude_single_modality=o.exclude_single_modality,
        keep_self_students=o.keep_self_students,
        # "official": per modality in IDT, per iteration otherwise
        epoch_distance=(
            official.epoch_distance if o.epoch_distance == "official" else o.epoch_distance
        ),
        warmup_decay=o.warmup_decay,
    )
    options = dict(
        weight_sep=o.weight_sep,
        deviations=deviations,
        track_every=o.track_every,
        eta=o.eta,
        eta_factor=o.eta_factor,
        eta_every=o.eta_every,
        beta_range=tuple(o.beta_range),
        warmup_epochs=o.warmup_epochs,
        eta_scale=eta_scale(cfg),
    )
    if o.name == "passion":
        options.update(
            temperature=o.temperature, weight_pixel=o.weight_pixel, weight_proto=o.weight_proto
        )
    else:
        options.update(track_distance=o.track_distance)
    options.update(o.options)
    objective = build_objective(
        o.name, num_modalities=num_modalities, num_classes=num_classes, **options
    )
    return _fast(cfg, objective)


def _fast(cfg: ExperimentConfig, objective):
    """The objective with its losses' Up on the fast kernel if ``train.fast_kernels``."""
    if cfg.train.fast_kernels and isinstance(getattr(objective, "upsample", None), nn.Module):
        speed_up(objective.upsample)
    return objective


def eta_scale(cfg: ExperimentConfig) -> float:
    """Schedule epochs per training epoch: ``objective.eta_epochs / train.epochs`` (1 if 0)."""
    n = cfg.objective.eta_epochs
    if n < 0:
        raise ValueError(f"objective.eta_epochs must be >= 0, got {n}")
    return n / cfg.train.epochs if n else 1.0


def ensure_data(cfg: ExperimentConfig, root: Path) -> None:
    """Generate the phantom at ``root`` if the config asks for it and it is absent; check
    that ``root`` holds a prepared dataset (and, for the phantom, the one asked for)."""
    prepared = (root / "dataset.json").exists()
    if cfg.data.dataset == "phantom" and cfg.data.phantom_cases > 0:
        from passion_kit.data import load_description, make_phantom
        from passion_kit.data.phantom import DESIGN

        want = {"num_cases": cfg.data.phantom_cases, "size": cfg.data.phantom_size}
        if not prepared:
            make_phantom(root, num_cases=want["num_cases"], size=want["size"], seed=0)
        else:
            extra = load_description(root).extra
            have = {key: extra.get(key) for key in want}
            if have != want:
                raise ValueError(
                    f"{root} holds a phantom of {have['num_cases']} cases of "
                    f"{have['size']}^3, but the config asks for {want['num_cases']} cases of "
                    f"{want['size']}^3 (data.phantom_cases, data.phantom_size): set data.root "
                    f"to another folder, or delete {root} to generate it again"
                )
            if extra.get("design", 1) != DESIGN:
                raise ValueError(
                    f"{root} holds a phantom of design {extra.get('design', 1)}, made by an "
                    f"earlier version of the kit; this version generates design {DESIGN}: "
                    f"delete {root} to generate it again, or set data.root to another folder"
                )
    if not (root / "dataset.json").exists():
        raise FileNotFoundError(
            f"no prepared dataset at {root} (dataset.json missing); prepare it with the scripts in "
            f"data_scripts/ or set data.root / PASSION_KIT_DATA"
        )


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`fit`, with a clear error for anything else."""
    path = Path(path)
    try:
        # weights_only: tensors, numbers, strings, lists and dicts only, so that loading a
        # downloaded or shared checkpoint can never run code stored in it (pickle).
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as exc:
        found = [line for line in str(exc).splitlines() if "Unsupported global" in line]
        if not found:  # not a pickle of any kind: a truncated or foreign file
            raise ValueError(f"{path} is not a readable passion-kit checkpoint") from None
        raise ValueError(
            f"{path} holds more than tensors, numbers, strings, lists and dicts, so it is "
            f"not loaded (a checkpoint could run code when loaded): {found[0].strip()}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"{path} is not a readable passion-kit checkpoint ({exc})") from None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("model"), dict)
        or "backbone" not in state
    ):
        raise ValueError(f"{path} is not a passion-kit checkpoint (no 'model'/'backbone' entries)")
    missing = [k for k in ("config", "num_modalities", "num_classes") if k not in state]
    if missing or not isinstance(state.get("config"), dict):
        raise ValueError(
            f"{path} is not a complete passion-kit checkpoint: no {', '.join(missing) or 'config'}"
        )
    return state


def check_compatible(state: dict, backbone: Backbone, where: str) -> None:
    """Raise a clear error when a checkpoint was made for another backbone or size."""
    found = (state["backbone"], state["num_modalities"], state["num_classes"])
    expected = (backbone.name, backbone.num_modalities, backbone.num_classes)
    if found != expected:
        raise ValueError(
            f"{where} was trained for backbone {found[0]!r} with {found[1]} modalities and "
            f"{found[2]} classes, but this run builds {expected[0]!r} with {expected[1]} "
            f"modalities and {expected[2]} classes"
        )
    try:
        backbone.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())  # every missing, unexpected and misshapen tensor
        raise ValueError(
            f"{where} does not fit this model (width or options differ): {detail[:600]}"
        ) from None

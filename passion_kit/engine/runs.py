"""What a run is made of: its folder's files, its model, its checkpoints, its data.

Training (:mod:`passion_kit.engine.train`), evaluation and the lessons all open runs
through these.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from passion_kit.config import ExperimentConfig
from passion_kit.fast import speed_up
from passion_kit.models import Backbone, build_backbone

__all__ = ["RunFiles", "build_model", "check_compatible", "ensure_data", "load_checkpoint"]


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

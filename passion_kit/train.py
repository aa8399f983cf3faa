"""Training: any backbone, with or without PASSION, on CPU, one GPU or many (DDP).

Usage::

    from passion_kit.config import ExperimentConfig
    from passion_kit.train import fit
    run_dir = fit(ExperimentConfig.preset("cpu"))

    python -m passion_kit train --preset cpu train.epochs=2
    torchrun --nproc_per_node 2 -m passion_kit train --preset cpu   # DDP

A run directory holds ``config.json``, ``meta.json`` (versions, status, last epoch),
``checkpoint_last.pt`` (model, optimizer, objective state, history; written atomically
every epoch), ``checkpoint_epoch<N>.pt`` at ``train.keep_epochs`` and the last epoch,
``history_epoch.csv`` (one row per epoch) and ``history_modality.csv`` (one row per
epoch and modality: distance D, relative preference, beta, gate rate, loss terms).
Running the same config again resumes from ``checkpoint_last.pt``; every epoch starts
from a seed derived from (seed, epoch), so an interrupted and resumed CPU run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import passion_kit
from passion_kit.config import ExperimentConfig
from passion_kit.data import PreparedDataset, augment_for
from passion_kit.env import cpu_has_native_bf16, machine_summary, reuse_freed_memory
from passion_kit.io import (
    atomic_torch_save,
    atomic_write_text,
    check_free_space,
    remove_stale_temps,
    write_csv,
)
from passion_kit.models import Backbone, build_backbone
from passion_kit.objectives import build_objective

__all__ = [
    "fit",
    "select_device",
    "build_model",
    "build_objective_from",
    "poly_lr",
    "amp_dtype",
    "RunFiles",
]

# Config keys that may differ between a run and its resumption.
RESUMABLE_CHANGES = {
    "train.progress",
    "train.device",
    "train.run_dir",  # where the run folder lies (moved, or named relatively)
    "data.num_workers",
    "data.root",
}


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. An explicit request that cannot be met is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"train.device must be auto, cpu, cuda, cuda:N or mps, got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    count = torch.cuda.device_count()
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise ValueError(f"train.device={name!r} but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device='mps' but MPS is not available; use 'auto' or 'cpu'")
    return device


def poly_lr(base: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """The official poly schedule, set once per epoch: ``round(base (1 - e/E)^power, 8)``."""
    return round(base * (1 - epoch / epochs) ** power, 8)


def build_model(cfg: ExperimentConfig, num_modalities: int, num_classes: int) -> Backbone:
    return build_backbone(
        cfg.model.backbone,
        num_modalities=num_modalities,
        num_classes=num_classes,
        width=cfg.model.width,
        patch_size=tuple(cfg.data.patch_size),
        **cfg.model.options,
    )


def build_objective_from(cfg: ExperimentConfig, num_modalities: int, num_classes: int):
    o = cfg.objective
    if o.name in ("passion", "baseline"):
        students, epoch_distance = o.students, o.epoch_distance
        if students == "official":  # all four in PDT (the official HEAD), else the available
            students = "all" if cfg.data.setting == "pdt" else "available"
        if epoch_distance == "official":  # per modality in IDT, per iteration otherwise
            epoch_distance = "modality" if cfg.data.setting == "idt" else "iteration"
        options = dict(
            temperature=o.temperature,
            weight_sep=o.weight_sep,
            weight_pixel=o.weight_pixel,
            weight_proto=o.weight_proto,
            students=students,
            reduction=o.reduction,
            skip_degenerate=o.skip_degenerate,
            exclude_single_modality=o.exclude_single_modality,
            keep_self_students=o.keep_self_students,
            epoch_distance=epoch_distance,
            warmup_decay=o.warmup_decay,
            track_distance=o.track_distance and o.name == "baseline",
            track_every=o.track_every,
            eta=o.eta,
            eta_factor=o.eta_factor,
            eta_every=o.eta_every,
            beta_range=tuple(o.beta_range),
            warmup_epochs=o.warmup_epochs,
            eta_scale=eta_scale(cfg),
        )
        options.update(o.options)
    else:
        options = dict(o.options)
        if o.name == "ogm_ge":
            options.setdefault("seed", cfg.train.seed)  # its gradient noise
    return build_objective(
        o.name, num_modalities=num_modalities, num_classes=num_classes, **options
    )


def eta_scale(cfg: ExperimentConfig) -> float:
    """Schedule epochs per training epoch: ``objective.eta_epochs / train.epochs`` (1 if 0)."""
    n = cfg.objective.eta_epochs
    if n < 0:
        raise ValueError(f"objective.eta_epochs must be >= 0, got {n}")
    return n / cfg.train.epochs if n else 1.0


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


def _reseed(seed: int, epoch: int) -> None:
    s = (seed * 1_000_003 + epoch) % 2**31
    random.seed(s)
    np.random.seed(s)  # noqa: NPY002 - seeds libraries that use numpy's global RNG
    torch.manual_seed(s)


def _versions() -> dict[str, str]:
    return {
        "passion_kit": passion_kit.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _config_differences(a: dict, b: dict) -> list[str]:
    """Keys whose values differ; a key ``a`` lacks (a run from an earlier kit) counts as
    its default, which is what that kit did."""
    try:
        a = ExperimentConfig.from_dict(a, source="checkpoint").to_dict()
    except ValueError:
        pass  # a key this kit does not know: compare as stored
    keys = []
    for section in a.keys() | b.keys():
        for key in a.get(section, {}).keys() | b.get(section, {}).keys():
            if a.get(section, {}).get(key) != b.get(section, {}).get(key):
                keys.append(f"{section}.{key}")
    # eval.* only says how the finished run is evaluated: free to change on resumption.
    return sorted(k for k in set(keys) - RESUMABLE_CHANGES if not k.startswith("eval."))


class _Step(nn.Module):
    """The objective's step as a module forward, so DDP can wrap it."""

    def __init__(self, backbone: Backbone, objective) -> None:
        super().__init__()
        self.backbone = backbone
        self.objective = objective

    def forward(self, batch: dict):
        result = self.objective(batch, self.backbone)
        return result.loss, result


def _batches(loader: DataLoader, sampler, epoch: int, count: int) -> Iterator[dict]:
    """``count`` batches, re-iterating the loader when an epoch is longer than one pass."""
    produced, lap = 0, 0
    while produced < count:
        if sampler is not None:
            sampler.set_epoch(epoch * 1000 + lap)
        for batch in loader:
            yield batch
            produced += 1
            if produced == count:
                return
        lap += 1


def amp_dtype(setting: str, device: torch.device, key: str = "train.amp") -> torch.dtype | None:
    """The autocast dtype of an amp setting (``train.amp``, ``eval.amp``) on ``device``.

    ``off``: None (fp32). ``auto``: bf16 on CUDA where supported, else fp16; fp32 elsewhere.
    ``fast``: as ``auto``, and bf16 on a CPU that computes bf16 in hardware.
    ``bf16`` / ``fp16``: that dtype (fp16 only on CUDA).
    """
    if setting not in ("auto", "fast", "off", "bf16", "fp16"):
        raise ValueError(f"{key} must be auto, fast, off, bf16 or fp16, got {setting!r}")
    if setting == "fast" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if setting == "off" or (setting in ("auto", "fast") and device.type != "cuda"):
        return None
    if setting in ("auto", "fast"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "fp16" and device.type != "cuda":
        raise ValueError(f"{key}='fp16' needs a CUDA device; use 'bf16' on CPU")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def _ensure_data(cfg: ExperimentConfig, root: Path) -> None:
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


def fit(cfg: ExperimentConfig, *, stop_after: int | None = None) -> Path:
    """Train (or resume) the run described by ``cfg``; returns its run directory.

    Args:
        cfg: the experiment configuration.
        stop_after: stop after this many epochs *in this call* (a time box; the run can be
            resumed by calling :func:`fit` again with the same config).
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = select_device(cfg.train.device)
    rank, world = 0, 1
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cpu":
        reuse_freed_memory()  # large activations are not faulted in again on every step
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    for name in ("epochs", "batch_size"):
        value = getattr(cfg.train, name)
        if value < 1:
            raise ValueError(f"train.{name} must be >= 1, got {value}")
    if cfg.train.optimizer not in ("adamw", "adam"):
        raise ValueError(f"train.optimizer must be adamw or adam, got {cfg.train.optimizer!r}")

    data_root = cfg.dataset_root()
    if rank == 0:
        _ensure_data(cfg, data_root)
    if distributed:
        dist.barrier()
    dataset = PreparedDataset(
        data_root,
        cfg.data.train_split,
        setting=cfg.data.setting,
        missing_rates=cfg.data.missing_rates if cfg.data.setting != "pdt" else None,
        augment=augment_for(
            _description(data_root),
            tuple(cfg.data.patch_size),
            jitter=cfg.data.jitter,
            image_fill=cfg.data.image_fill,
        ),
    )
    if len(dataset) == 0:
        raise ValueError(f"the training split {cfg.data.train_split!r} of {data_root} is empty")
    m = dataset.description.num_modalities
    k = len(dataset.description.classes)

    _reseed(cfg.train.seed, 0)
    backbone = build_model(cfg, m, k).to(device)
    objective = build_objective_from(cfg, m, k)
    if cfg.data.setting in ("idt", "idt_drop") and hasattr(objective, "set_omega"):
        counts, total = dataset.availability()
        omega = torch.where(counts > 0, total / counts.clamp_min(1).double(), 0.0).float()
        objective.set_omega(omega)
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(
        backbone.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True
    )
    autocast_dtype = amp_dtype(cfg.train.amp, device)
    machine = machine_summary(device, autocast_dtype)  # recorded in meta.json
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)

    files = RunFiles(Path(cfg.train.run_dir) / cfg.run_name())
    if rank == 0:
        remove_stale_temps(files.root)  # left by a run killed while it saved
        # A checkpoint (weights, optimizer moments, history) is written next to the last.
        state_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
        check_free_space(files.root, 2 * 4 * state_bytes + 2**24, "a checkpoint of this run")
    start_epoch, history = 0, {"epoch": [], "modality": []}
    if files.last.exists():
        start_epoch, history = _resume(files, cfg, backbone, optimizer, objective, scaler, device)
    elif rank == 0:
        files.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(files.config, cfg.to_json())

    def _sum(t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the processes (a copy)."""
        t = t.clone()
        dist.all_reduce(t)
        return t

    if distributed and hasattr(objective, "batch_reducer"):
        objective.batch_reducer = _sum

    step = _Step(backbone, objective)
    model = step
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            step,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.train.seed)
    names = dataset.description.modalities.modalities
    epochs_done = 0
    for epoch in range(start_epoch, cfg.train.epochs):
        if stop_after is not None and epochs_done >= stop_after:
            break
        _reseed(cfg.train.seed, epoch + 1)
        generator = torch.Generator().manual_seed(cfg.train.seed * 7919 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=cfg.data.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
            persistent_workers=False,
        )
        iterations = cfg.train.iterations_per_epoch or len(loader)
        lr = poly_lr(cfg.train.lr, epoch, cfg.train.epochs, cfg.train.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        backbone.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        mod_sums: dict[str, torch.Tensor] = {}
        progress = _progress(iterations, f"epoch {epoch}", cfg.train.progress and rank == 0)
        for batch in _batches(loader, sampler, epoch, iterations):
            batch = {
                key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
                for key, value in batch.items()
            }
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                loss, result = model(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch} (cases {batch.get('case_id')}); "
                    f"terms {result.terms}"
                )
            scaler.scale(loss).backward()
            if hasattr(objective, "after_backward"):
                objective.after_backward(backbone)
            scaler.step(optimizer)
            scaler.update()
            loss_value = float(loss.detach())
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            for key, value in result.terms.items():
                sums[key] = sums.get(key, 0.0) + value
            for key, value in result.per_modality.items():
                if key in ("sep", "pixel", "proto"):
                    mod_sums[key] = mod_sums.get(key, torch.zeros(m)) + value.float()
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.3f}")
        progress.close()
        if distributed and hasattr(getattr(objective, "state", None), "synchronize"):
            # The epoch's statistics of the global batch, so every rank updates alike.
            objective.state.synchronize(lambda t: _sum(t.to(device)).cpu())
        record = objective.end_epoch()
        elapsed = time.perf_counter() - started
        history["epoch"].append(
            {"epoch": epoch, "lr": lr, "time_s": round(elapsed, 3), "iterations": iterations}
            | {key: value / iterations for key, value in sums.items()}
        )
        if rank == 0:
            print(_epoch_line(epoch, cfg.train.epochs, history["epoch"][-1], record), flush=True)
        for i, name in enumerate(names):
            row = {"epoch": epoch, "modality": name}
            row |= {key: values[i] for key, values in record.items()}
            row |= {f"loss_{key}": float(v[i]) / iterations for key, v in mod_sums.items()}
            history["modality"].append(row)
        epochs_done += 1
        if rank == 0:
            _save(files, cfg, backbone, optimizer, objective, scaler, history, epoch, world)
            _save_meta(files, cfg, history, epoch, world, machine)
    if distributed:
        _check_replicas_agree(backbone)
        dist.barrier()
    return files.root


def _epoch_line(epoch: int, epochs: int, row: dict, record: dict) -> str:
    """One line that stays on screen per epoch: losses, seconds, and beta where it moves."""
    terms = ", ".join(
        f"{key} {row[key]:.3f}" for key in ("fuse", "sep", "pixel", "proto") if key in row
    )
    line = f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.3f} ({terms}), {row['time_s']:.0f} s"
    beta = record.get("beta")
    if beta and any(abs(b - 1.0) > 1e-9 for b in beta):
        line += f", beta {min(beta):.2f}-{max(beta):.2f}"
    return line


def _description(root: Path):
    from passion_kit.data import load_description

    return load_description(root)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _save(files, cfg, backbone, optimizer, objective, scaler, history, epoch, world) -> None:
    completed = epoch + 1
    state = {
        "format": 1,
        "epoch": completed,
        "config": cfg.to_dict(),
        "backbone": cfg.model.backbone,
        "num_modalities": backbone.num_modalities,
        "num_classes": backbone.num_classes,
        "model": backbone.state_dict(),
        "optimizer": optimizer.state_dict(),
        "objective": objective.state.state_dict() if hasattr(objective, "state") else {},
        "scaler": scaler.state_dict(),
        "history": history,
        "torch_rng": torch.get_rng_state(),
    }
    atomic_torch_save(state, files.last)
    if completed in cfg.train.keep_epochs or completed == cfg.train.epochs:
        atomic_torch_save(state, files.epoch_checkpoint(completed))
    write_csv(files.history_epoch, history["epoch"])
    write_csv(files.history_modality, history["modality"])


def _save_meta(files, cfg, history, epoch, world, machine: str) -> None:
    """``meta.json``: status, epochs, versions and the machine and precision it ran on."""
    completed = epoch + 1
    meta = {
        "status": "complete" if completed == cfg.train.epochs else "in progress",
        "epochs_completed": completed,
        "epochs": cfg.train.epochs,
        "world_size": world,
        "last_epoch": history["epoch"][-1],
        "versions": _versions(),
        "machine": machine,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(files.meta, json.dumps(meta, indent=2, default=float))


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
    if not isinstance(state, dict) or "model" not in state or "backbone" not in state:
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
        raise ValueError(
            f"{where} does not fit this model (width or options differ): {exc}"
        ) from None


def _resume(files, cfg, backbone, optimizer, objective, scaler, device):
    state = load_checkpoint(files.last, map_location=device)
    differences = _config_differences(state["config"], cfg.to_dict())
    if differences:
        raise ValueError(
            f"{files.root} holds a run with another configuration ({', '.join(differences)} "
            f"differ); choose another train.name or train.run_dir, or delete that run"
        )
    check_compatible(state, backbone, str(files.last))
    optimizer.load_state_dict(state["optimizer"])
    if hasattr(objective, "state"):
        objective.state.load_state_dict(state["objective"])
    scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["history"]


def _check_replicas_agree(backbone: Backbone) -> None:
    """DDP: every rank must end with the same weights (a cheap all-reduce of a checksum)."""
    total = torch.stack([p.detach().double().sum() for p in backbone.parameters()]).sum()
    gathered = total.clone().to(next(backbone.parameters()).device)
    low, high = gathered.clone(), gathered.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not math.isclose(float(low), float(high), rel_tol=1e-9, abs_tol=1e-9):
        raise RuntimeError(
            f"DDP replicas disagree after training: checksums {float(low)} .. {float(high)}"
        )

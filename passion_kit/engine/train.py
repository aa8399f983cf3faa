"""Training: any backbone, with or without PASSION, on CPU, one GPU or many (DDP).

Usage::

    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.train import fit
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

import contextlib
import json
import math
import os
import platform
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import passion_kit
from passion_kit.config import ExperimentConfig
from passion_kit.data import PreparedDataset, augment_for
from passion_kit.engine.runs import (
    RunFiles,
    build_model,
    build_objective_from,
    check_compatible,
    check_config,
    ensure_data,
    eta_scale,
    load_checkpoint,
)
from passion_kit.engine.runtime import (
    amp_dtype,
    machine_summary,
    reuse_freed_memory,
    select_device,
)
from passion_kit.io import (
    RunLock,
    atomic_torch_save,
    atomic_write_text,
    check_free_space,
    check_writable,
    inside,
    remove_stale_temps,
    write_csv,
)
from passion_kit.models import Backbone

__all__ = ["fit", "build_objective_from", "eta_scale", "poly_lr"]

# Config keys that may differ between a run and its resumption.
RESUMABLE_CHANGES = {
    "train.progress",
    "train.device",
    "train.run_dir",  # where the run folder lies (moved, or named relatively)
    "train.fast_kernels",  # the same maths on another route
    "data.num_workers",
    "data.root",
}


def fit(cfg: ExperimentConfig, *, stop_after: int | None = None) -> Path:
    """Train (or resume) the run described by ``cfg``; returns its run directory.

    Args:
        cfg: the experiment configuration.
        stop_after: stop after this many epochs *in this call* (a time box; the run can be
            resumed by calling :func:`fit` again with the same config).
    """
    run = _set_up(cfg)
    with _exclusive(run):  # one process per run folder
        start_epoch, history = _open_run(run)
        for done, epoch in enumerate(range(start_epoch, cfg.train.epochs)):
            if stop_after is not None and done >= stop_after:
                break
            sums, mod_sums, lr, iterations, seconds = _train_one_epoch(run, epoch)
            record = _close_epoch(run)  # PASSION: the beta update
            row = {"epoch": epoch, "lr": lr, "time_s": round(seconds, 3), "iterations": iterations}
            history["epoch"].append(row | {key: value / iterations for key, value in sums.items()})
            history["modality"] += _modality_rows(run, epoch, record, mod_sums, iterations)
            if run.rank == 0:
                print(
                    _epoch_line(epoch, cfg.train.epochs, history["epoch"][-1], record), flush=True
                )
                _save(run, history, epoch)
                _save_meta(run, history, epoch)
    if run.world > 1:
        _check_replicas_agree(run.backbone)
        dist.barrier()
    return run.files.root


@dataclass
class _Run:
    """What one training process holds."""

    cfg: ExperimentConfig
    device: torch.device
    rank: int
    world: int
    dataset: PreparedDataset
    backbone: Backbone
    objective: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    machine: str  # the machine line recorded in meta.json
    files: RunFiles
    step: nn.Module  # the objective's step as a module (DDP-wrapped under DDP)
    sampler: DistributedSampler | None
    run_id: str = ""  # the run's identity, in its checkpoints and meta.json


def _set_up(cfg: ExperimentConfig) -> _Run:
    """Device and processes, the training set, the model, objective and optimizer."""
    check_config(cfg)  # every key, before any work
    check_writable(cfg.train.run_dir, "runs")  # before the data is generated
    device, rank, world = _start_processes(cfg)
    dataset = _training_set(cfg, rank, world)
    m = dataset.description.num_modalities
    k = len(dataset.description.classes)

    _reseed(cfg.train.seed, 0)
    backbone = build_model(cfg, m, k).to(device)
    objective = build_objective_from(cfg, m, k)
    if cfg.data.setting in ("idt", "idt_drop") and hasattr(objective, "set_omega"):
        counts, total = dataset.availability()  # omega_m = N / n_m (docs/method.md D.2)
        omega = torch.where(counts > 0, total / counts.clamp_min(1).double(), 0.0).float()
        objective.set_omega(omega)
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(
        backbone.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True
    )
    amp = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    inside(cfg.train.run_dir, cfg.run_name(), what="the run folder")
    files = RunFiles(Path(cfg.train.run_dir) / cfg.run_name())
    machine = machine_summary(device, amp)
    return _Run(
        cfg, device, rank, world, dataset, backbone, objective, optimizer, scaler, amp,
        machine, files, _Step(backbone, objective), None,
    )  # fmt: skip


def _close_epoch(run: _Run) -> dict[str, list[float]]:
    """The objective's end of epoch (under DDP on the global batch's statistics)."""
    if run.world > 1 and hasattr(getattr(run.objective, "state", None), "synchronize"):
        run.objective.state.synchronize(lambda t: _sum(t.to(run.device)).cpu())
    return run.objective.end_epoch()


def _modality_rows(run: _Run, epoch: int, record: dict, mod_sums: dict, iterations: int):
    """One history row per modality: the objective's record and the mean loss terms."""
    rows = []
    for i, name in enumerate(run.dataset.description.modalities.modalities):
        row = {"epoch": epoch, "modality": name}
        row |= {key: values[i] for key, values in record.items()}
        row |= {f"loss_{key}": float(v[i]) / iterations for key, v in mod_sums.items()}
        rows.append(row)
    return rows


def _exclusive(run: _Run):
    """The run folder's lock (rank 0; after a check that the folder can be written)."""
    if run.rank != 0:
        return contextlib.nullcontext()
    check_writable(run.files.root, "this run's checkpoints")
    return RunLock(run.files.root, "a training run")


def _start_processes(cfg: ExperimentConfig) -> tuple[torch.device, int, int]:
    """The device, and under torchrun the process group: ``(device, rank, world size)``."""
    device = select_device(cfg.train.device)
    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
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
    return device, rank, world


def _training_set(cfg: ExperimentConfig, rank: int, world: int) -> PreparedDataset:
    """The training split with its missing-modality masks and the paper's augmentation."""
    data_root = cfg.dataset_root()
    if rank == 0:
        ensure_data(cfg, data_root)
    if world > 1:
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
    return dataset


def _open_run(run: _Run) -> tuple[int, dict]:
    """Resume from the run folder's last checkpoint, or start it: ``(epoch, history)``.
    Under DDP, then wrap the step and give each process its share of the data."""
    files = run.files
    if run.rank == 0:
        remove_stale_temps(files.root)  # left by a run killed while it saved
        # A checkpoint (weights, optimizer moments, history) is written next to the last.
        state_bytes = sum(p.numel() * p.element_size() for p in run.backbone.parameters())
        check_free_space(files.root, 2 * 4 * state_bytes + 2**24, "a checkpoint of this run")
    if files.last.exists():
        start = _resume(run)
    else:
        run.run_id = uuid.uuid4().hex
        start = 0, {"epoch": [], "modality": []}
        if run.rank == 0:
            files.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(files.config, run.cfg.to_json())
    if run.world > 1:  # DDP: the (resumed) weights of rank 0, a share of the data each
        if hasattr(run.objective, "batch_reducer"):
            run.objective.batch_reducer = _sum
        ids = [run.device.index] if run.device.type == "cuda" else None
        run.step = nn.parallel.DistributedDataParallel(
            run.step, device_ids=ids, find_unused_parameters=True
        )
        seed = run.cfg.train.seed
        run.sampler = DistributedSampler(run.dataset, run.world, run.rank, shuffle=True, seed=seed)
    return start


def _train_one_epoch(run: _Run, epoch: int):
    """One epoch of steps: ``(loss sums, per-modality loss sums, lr, steps, seconds)``."""
    cfg, device = run.cfg, run.device
    _reseed(cfg.train.seed, epoch + 1)
    loader = DataLoader(
        run.dataset,
        batch_size=cfg.train.batch_size,
        shuffle=run.sampler is None,
        sampler=run.sampler,
        generator=torch.Generator().manual_seed(cfg.train.seed * 7919 + epoch),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
        persistent_workers=False,
    )
    iterations = cfg.train.iterations_per_epoch or len(loader)
    lr = poly_lr(cfg.train.lr, epoch, cfg.train.epochs, cfg.train.poly_power)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.backbone.train()
    started = time.perf_counter()
    m = run.dataset.description.num_modalities
    sums: dict[str, float] = {}
    mod_sums: dict[str, torch.Tensor] = {}
    progress = _progress(iterations, f"epoch {epoch}", cfg.train.progress and run.rank == 0)
    for batch in _batches(loader, run.sampler, epoch, iterations):
        batch = {
            key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()
        }
        run.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=run.amp, enabled=run.amp is not None):
            loss, result = run.step(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch} (cases {batch.get('case_id')}); "
                f"terms {result.terms}"
            )
        run.scaler.scale(loss).backward()
        if hasattr(run.objective, "after_backward"):
            run.objective.after_backward(run.backbone)
        run.scaler.step(run.optimizer)
        run.scaler.update()
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
    return sums, mod_sums, lr, iterations, time.perf_counter() - started


def _sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the processes (a copy)."""
    t = t.clone()
    dist.all_reduce(t)
    return t


def poly_lr(base: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """The official poly schedule, set once per epoch: ``round(base (1 - e/E)^power, 8)``."""
    return round(base * (1 - epoch / epochs) ** power, 8)


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


def _save(run: _Run, history: dict, epoch: int) -> None:
    """The last checkpoint (and a kept epoch's), then the history tables."""
    cfg, files, backbone, objective = run.cfg, run.files, run.backbone, run.objective
    completed = epoch + 1
    state = {
        "format": 1,
        "epoch": completed,
        "config": cfg.to_dict(),
        "backbone": cfg.model.backbone,
        "num_modalities": backbone.num_modalities,
        "num_classes": backbone.num_classes,
        "model": backbone.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "objective": objective.state.state_dict() if hasattr(objective, "state") else {},
        "scaler": run.scaler.state_dict(),
        "history": history,
        "torch_rng": torch.get_rng_state(),
        "run_id": run.run_id,
    }
    atomic_torch_save(state, files.last)
    if completed in cfg.train.keep_epochs or completed == cfg.train.epochs:
        atomic_torch_save(state, files.epoch_checkpoint(completed))
    write_csv(files.history_epoch, history["epoch"])
    write_csv(files.history_modality, history["modality"])


def _save_meta(run: _Run, history: dict, epoch: int) -> None:
    """``meta.json``: status, epochs, versions and the machine and precision it ran on."""
    cfg, completed = run.cfg, epoch + 1
    meta = {
        "status": "complete" if completed == cfg.train.epochs else "in progress",
        "epochs_completed": completed,
        "epochs": cfg.train.epochs,
        "world_size": run.world,
        "run_id": run.run_id,
        "last_epoch": history["epoch"][-1],
        "versions": _versions(),
        "machine": run.machine,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(run.files.meta, json.dumps(meta, indent=2, default=float))


def _resume(run: _Run) -> tuple[int, dict]:
    """Load the last checkpoint into the run, if it was made with this configuration."""
    files, cfg, objective = run.files, run.cfg, run.objective
    state = load_checkpoint(files.last, map_location=run.device)
    differences = _config_differences(state["config"], cfg.to_dict())
    if differences:
        raise ValueError(
            f"{files.root} holds a run with another configuration ({', '.join(differences)} "
            f"differ); choose another train.name or train.run_dir, or delete that run"
        )
    check_compatible(state, run.backbone, str(files.last))
    run.run_id = state.get("run_id") or uuid.uuid4().hex  # (runs of earlier kits had none)
    if run.rank == 0:
        _reconcile_config_file(files, state["config"])
    run.optimizer.load_state_dict(state["optimizer"])
    if hasattr(objective, "state"):
        objective.state.load_state_dict(state["objective"])
    run.scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["history"]


def _reconcile_config_file(files: RunFiles, used: dict) -> None:
    """A resumed run trains with its checkpoint's config; a ``config.json`` edited by hand
    since is named and rewritten to match, so the two never disagree."""
    try:
        on_disk = ExperimentConfig.from_file(files.config).to_dict()
    except (OSError, ValueError):
        on_disk = None
    used_cfg = ExperimentConfig.from_dict(used, source=str(files.last))
    if on_disk == used_cfg.to_dict():
        return
    if on_disk is not None:
        differ = _config_differences(on_disk, used_cfg.to_dict()) or ["place keys"]
        print(
            f"notice: {files.config} differs from the checkpoint ({', '.join(differ)}); "
            f"the checkpoint's settings are used and config.json is rewritten to them"
        )
    atomic_write_text(files.config, used_cfg.to_json())


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

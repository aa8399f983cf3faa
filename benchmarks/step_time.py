"""Time one training step with PASSION off (baseline) and on, side by side.

A step is forward, backward and an AdamW (amsgrad) update, in the IDT setting, for a
batch of samples that each have three of the four modalities (FLAIR, T1c and T2:
T1 is missing). Steps of the two objectives are interleaved in one process (a busy machine slows
both alike); peak memory is measured for each in a fresh process.

Usage::

    python benchmarks/step_time.py --backbone rfnet --patch-size 48 --device cpu
    python benchmarks/step_time.py --backbone rfnet --patch-size 80 --device cuda --amp

The last line is ``passion/baseline step ratio: X.XX`` (median step times). On CPU the
steps run as ``fit`` runs them, with freed memory reused
(``passion_kit.engine.runtime.reuse_freed_memory``);
``--system-malloc`` leaves glibc's defaults, to see what that saves. With
``--profile``, a table first says where each objective's step goes, module by module
(forward and backward; the fusion decoder part by part, level by level), from
``torch.profiler``: a backward op is charged to the module whose forward op recorded it.

    python benchmarks/step_time.py --backbone rfnet --patch-size 80 --device cpu --profile

With ``--plain``, a third row times a plain reference of the PASSION step: the same
objective and losses, but the teacher and each student a whole network pass of its own on
the zeroed input (the encoders rerun per student, one mask per ``fuse`` call: the direct
zero-and-concatenate path), as a plain loop over masks or the official code computes it;
``plain/kit PASSION step`` says what the kit's shared encoders and batched mask rows save.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time

PRESENT = [True, True, False, True]  # FLAIR, T1c, T2 present, T1 missing: three students
PLAIN = "passion, plain"


class _PlainRows:
    """The backbone interface over ``net`` with one whole network pass per mask row.

    ``fuse`` runs each row alone: a student's image is zeroed to its one modality and
    re-encoded; the teacher row (the first of each sample's rows) reuses the features
    ``encode`` returned, as a plain step computes the teacher and the unimodal decoder
    from one pass.
    """

    def __init__(self, net) -> None:
        self.net = net
        self._image = None

    def encode(self, image):
        self._image = image
        return self.net.encode(image)

    def separate(self, level_feats):
        return self.net.separate(level_feats)

    def fuse(self, feats, mask):
        import torch

        from passion_kit.models.base import FusionOut

        rows = mask.shape[0] // self._image.shape[0]
        outs = []
        for r in range(mask.shape[0]):
            n = r // rows
            if r % rows == 0:
                row_feats = [f[n : n + 1] for f in feats]
            else:
                image = self._image[n : n + 1] * mask[r].view(1, -1, 1, 1, 1)
                row_feats = self.net.encode(image)
            outs.append(self.net.fuse(row_feats, mask[r : r + 1]))
        return FusionOut(
            logits=torch.cat([o.logits for o in outs]),
            deep=[torch.cat(level) for level in zip(*(o.deep for o in outs), strict=True)],
            feature=torch.cat([o.feature for o in outs]),
        )


def _setup(args: argparse.Namespace, objective_name: str, plain: bool = False):
    """A fresh backbone, objective, optimizer and step function (same seed for both).

    ``plain``: the objective sees the backbone through :class:`_PlainRows`.
    """
    import torch
    from torch.profiler import record_function

    import passion_kit as pk
    from passion_kit.fast import speed_up

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = pk.build_backbone(args.backbone, width=args.width, patch_size=args.patch_size).to(device)
    if not getattr(args, "plain_kernels", False):
        speed_up(net)  # as fit and evaluation do (train.fast_kernels)
    model = _PlainRows(net) if plain else net
    objective = pk.objectives.build_objective(
        objective_name, num_modalities=net.num_modalities, num_classes=net.num_classes
    )
    if not getattr(args, "plain_kernels", False):
        speed_up(objective.upsample)  # the losses' Up, as build_objective_from does
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)
    size = (args.patch_size,) * 3
    # IDT: FLAIR, T1c and T2 present, T1 missing (zeroed), for every sample
    mask = torch.tensor([PRESENT] * args.batch_size, device=device)
    image = torch.randn(args.batch_size, 4, *size, device=device) * mask[:, :, None, None, None]
    label = torch.randint(0, 4, (args.batch_size, *size), device=device)
    batch = {"image": image, "label": label, "mask": mask}
    amp_dtype = torch.bfloat16 if args.amp else None

    cuda = device.type == "cuda"
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else []

    def step() -> float:
        """One step; seconds from zero_grad to the end of the update (CUDA events on a GPU)."""
        if cuda:
            torch.cuda.synchronize()
            events[0].record()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with record_function("step: forward"):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                result = objective(batch, model)
        result.loss.backward()
        optimizer.step()
        if cuda:
            events[1].record()
            events[1].synchronize()
            return events[0].elapsed_time(events[1]) / 1e3
        return time.perf_counter() - start

    step.net = net  # for --profile
    step.batch = batch  # for official_step_time.py: the same input
    return step


def _module_groups(net) -> dict:
    """Module -> its row in the profile: each part of the backbone, and the fusion decoder
    (``decoder``) part by part, one row per level for its per-level lists."""
    from torch import nn

    groups = {}
    for name, child in net.named_children():
        if name != "decoder":  # a list (one encoder per modality) is one row
            for module in child if isinstance(child, nn.ModuleList) else [child]:
                groups[module] = name
            continue
        for sub, part in child.named_children():
            items = enumerate(part) if isinstance(part, nn.ModuleList) else [(None, part)]
            for i, module in items:
                groups[module] = f"decoder.{sub}" + ("" if i is None else f"[{i}]")
    return groups


# row name -> (objective, plain)
_OBJECTIVES = {
    "baseline": ("baseline", False),
    "passion": ("passion", False),
    PLAIN: ("passion", True),
}

MODULE = "module: "  # profiler ranges opened around each module group's forward
REST = "rest: losses, masks, glue"


def _profile(step, steps: int) -> dict[str, tuple[float, float]]:
    """Seconds per step, (forward, backward), of every module group, the rest and AdamW."""
    from torch.profiler import ProfilerActivity, profile, record_function

    ranges: list = []
    hooks = []
    for module, label in _module_groups(step.net).items():

        def pre(_m, _i, label=label):
            ranges.append(record_function(MODULE + label))
            ranges[-1].__enter__()

        def post(_m, _i, _o):
            ranges.pop().__exit__(None, None, None)

        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    finally:
        for hook in hooks:
            hook.remove()
    events = prof.events()
    label_of_seq: dict[int, str] = {}
    totals: dict[str, list[float]] = {}

    def add(label: str, kind: int, us: float) -> None:
        totals.setdefault(label, [0.0, 0.0])[kind] += us / 1e6 / steps

    def nearest_module(ev):
        while ev is not None and not ev.name.startswith(MODULE):
            ev = ev.cpu_parent
        return ev.name.removeprefix(MODULE) if ev is not None else None

    in_modules = 0.0  # forward microseconds spent inside some module group
    for ev in events:
        if ev.name.startswith(MODULE):  # forward time not spent in a nested module
            nested = [c for c in ev.cpu_children if c.name.startswith(MODULE)]
            own = ev.cpu_time_total - sum(c.cpu_time_total for c in nested)
            add(ev.name.removeprefix(MODULE), 0, own)
            in_modules += own
        elif ev.sequence_nr >= 0 and not ev.name.startswith("autograd::"):
            label = nearest_module(ev)
            if label is not None:
                label_of_seq.setdefault(ev.sequence_nr, label)
    forward_all = sum(ev.cpu_time_total for ev in events if ev.name == "step: forward")
    add(REST, 0, forward_all - in_modules)
    for ev in events:
        if ev.name.startswith("autograd::engine::evaluate_function") and ev.cpu_parent is None:
            add(label_of_seq.get(ev.sequence_nr, REST), 1, ev.cpu_time_total)
        elif ev.name.startswith("Optimizer.step"):
            add("optimizer (AdamW)", 0, ev.cpu_time_total)
    return {k: (v[0], v[1]) for k, v in totals.items()}


def _print_profile(profiles: dict[str, dict[str, tuple[float, float]]]) -> None:
    names = list(profiles)
    rows = list(dict.fromkeys(k for p in profiles.values() for k in p))
    head = "".join(f"{n + ' fwd':>15}{n + ' bwd':>15}" for n in names)
    print(f"{'where a step goes (s)':<30}{head}")
    for row in rows:
        cells = "".join(
            f"{profiles[n].get(row, (0, 0))[0]:>15.3f}{profiles[n].get(row, (0, 0))[1]:>15.3f}"
            for n in names
        )
        print(f"{row:<30}{cells}")
    totals = "".join(f"{sum(a + b for a, b in profiles[n].values()):>30.3f}" for n in names)
    print(f"{'total (profiled)':<30}{totals}")


def _configure(args: argparse.Namespace) -> bool:
    """Threads, and on CPU the allocator as ``fit`` sets it; True when freed memory is reused."""
    import torch

    from passion_kit.engine.runtime import reuse_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    return args.device == "cpu" and not args.system_malloc and reuse_freed_memory()


def _peak_memory(args: argparse.Namespace, name: str, queue) -> None:
    """In a fresh process: peak memory of two steps of one objective."""
    import torch

    _configure(args)
    step = _setup(args, *_OBJECTIVES[name])
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step()
    step()
    if args.device.startswith("cuda"):
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
    else:
        queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="rfnet")
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--profile", action="store_true", help="where a step goes, per module")
    parser.add_argument(
        "--plain", action="store_true", help="also time a plain PASSION step (a pass per mask)"
    )
    parser.add_argument(
        "--plain-kernels",
        action="store_true",
        help="the plain PyTorch modules, without passion_kit.fast (train.fast_kernels=false)",
    )
    parser.add_argument(
        "--system-malloc", action="store_true", help="CPU: glibc's defaults, freed memory unmapped"
    )
    args = parser.parse_args(argv)

    import torch

    reusing = _configure(args)
    names = ("baseline", "passion", PLAIN) if args.plain else ("baseline", "passion")
    ctx = mp.get_context("spawn")
    peak = {}
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak_memory, args=(args, name, queue))
        proc.start()
        peak[name] = queue.get()
        proc.join()
        if proc.exitcode:
            sys.exit(f"the {name} memory measurement failed (exit code {proc.exitcode})")

    # Timing: both objectives in this process, steps interleaved so that a busy machine
    # slows both alike; the median is reported.
    steps = {name: _setup(args, *_OBJECTIVES[name]) for name in names}
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            times[name].append(steps[name]())

    profiled = ("baseline", "passion")
    profiles = (
        {name: _profile(steps[name], args.steps) for name in profiled} if args.profile else {}
    )

    memory_kind = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS"
    from passion_kit.engine.runtime import cpu_has_native_bf16, machine_summary

    amp = torch.bfloat16 if args.amp else None
    print(f"machine: {machine_summary(torch.device(args.device), amp)}")
    if args.device == "cpu":
        print(f"bf16 autocast native on this CPU: {'yes' if cpu_has_native_bf16() else 'no'}")
    print(
        f"backbone {args.backbone}, patch {args.patch_size}^3, batch {args.batch_size}, "
        f"width {args.width}, device {args.device}{' (bf16 autocast)' if args.amp else ''}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
        + (f", freed memory reused {'yes' if reusing else 'no'}" if args.device == "cpu" else "")
    )
    if profiles:
        _print_profile(profiles)
        base = profiles["baseline"]
        decoder = sum(sum(v) for k, v in base.items() if k.startswith("decoder"))
        students = sum(PRESENT)
        print(
            f"if each of the {students} students' fusion-decoder passes cost what the "
            f"baseline's one costs ({decoder:.3f} s) and nothing else were added, the ratio "
            f"would be {1 + students * decoder / sum(sum(v) for v in base.values()):.2f}"
        )
    width = max(len(name) for name in names)
    print(
        f"{'objective':<{width}} {'median step (s)':>16} {'min (s)':>9} {memory_kind + ' (MB)':>20}"
    )
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:<{width}} {median:>16.3f} {min(times[name]):>9.3f} {peak[name]:>20.0f}")
    if args.plain:
        saved = statistics.median(times[PLAIN]) / statistics.median(times["passion"])
        print(f"plain/kit PASSION step: {saved:.2f}")
    ratio = statistics.median(times["passion"]) / statistics.median(times["baseline"])
    print(f"passion/baseline step ratio: {ratio:.2f}")
    return {"ratio": ratio, "times": times, "peak_mb": peak, "profile": profiles}


if __name__ == "__main__":
    main()

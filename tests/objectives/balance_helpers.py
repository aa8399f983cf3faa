"""Shared fixtures for the balancing-objective tests: a toy backbone and short RFNet runs."""

from __future__ import annotations

import torch
from torch import nn

import passion_kit as pk
from passion_kit.models.base import Backbone, FusionOut, expand_rows, rows_per_sample
from passion_kit.objectives import build_objective

SIZE = 16
# Three IDT steps: two/three-modality samples, a single-modality sample, the full set.
IDT_STEPS = (
    [[True, True, False, True], [True, False, True, True]],
    [[False, True, True, False], [False, False, True, False]],
    [[True, True, True, True], [False, True, False, False]],
)


class ToyBackbone(Backbone):
    """Two classes, one level; each modality's evidence passes through unchanged at init.

    Encoder m is a 1x1x1 conv (weight 1, bias 0); ``fuse`` sums the available modalities'
    features into the class-1 logit z (logits ``(-z, z)``) and returns the masked
    modality stack as its feature; ``separate`` does the same for one modality. A
    modality whose input is ``s * (2 y - 1)`` is therefore as confident as ``s`` is large.
    """

    name = "toy"

    def __init__(self, num_modalities: int = 2) -> None:
        super().__init__(num_modalities=num_modalities, num_classes=2, width=1)
        self.encoders = nn.ModuleList(nn.Conv3d(1, 1, 1) for _ in range(num_modalities))
        self.head = nn.Conv3d(1, 1, 1)
        self.sep_head = nn.Conv3d(1, 1, 1)
        for conv in (*self.encoders, self.head, self.sep_head):
            nn.init.ones_(conv.weight)
            nn.init.zeros_(conv.bias)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        per_mod = [enc(image[:, i : i + 1]) for i, enc in enumerate(self.encoders)]
        return [torch.stack(per_mod, dim=1)]  # (B, M, 1, *sp)

    def fuse(self, feats: list[torch.Tensor], mask: torch.Tensor) -> FusionOut:
        x = expand_rows(feats[0], rows_per_sample(feats[0].shape[0], mask))
        x = x * mask[:, :, None, None, None, None].to(x.dtype)
        z = self.head(x.sum(1))
        logits = torch.cat((-z, z), dim=1)
        return FusionOut(logits=logits, deep=[logits], feature=x.flatten(1, 2))

    def separate(self, level_feats: list[torch.Tensor]) -> torch.Tensor:
        z = self.sep_head(level_feats[0])
        return torch.cat((-z, z), dim=1)


def dominance_batch(strengths, masks=None, size: int = 8) -> dict:
    """Modality m's image is ``strengths[m] * (2 y - 1)``: a larger strength is a modality
    whose unimodal prediction is better (the dominant one)."""
    m = len(strengths)
    b = 2 if masks is None else len(masks)
    mask = torch.ones(b, m, dtype=torch.bool) if masks is None else torch.tensor(masks)
    label = torch.zeros(b, size, size, size, dtype=torch.long)
    label[:, 2:6, 2:6, 2:6] = 1
    sign = (2 * label - 1).float().unsqueeze(1)
    image = torch.tensor(strengths, dtype=torch.float32)[None, :, None, None, None] * sign
    return {"image": image * mask[:, :, None, None, None], "label": label, "mask": mask}


BACKBONES = ("rfnet", "mmformer", "m2ftrans")  # every registered backbone (checked below)
# Small but complete settings of each backbone (as in tests/models), and their patch sizes.
SMALL = {
    "rfnet": {"patch_size": SIZE, "width": 8},
    "mmformer": {"patch_size": 32, "width": 4, "embed_dim": 32, "mlp_dim": 64, "heads": 4},
    "m2ftrans": {"patch_size": 32, "width": 4, "mlp_dim": 64, "heads": 4},
}


def rfnet_batch(masks, seed: int, size: int = SIZE) -> dict:
    """An IDT batch (absent channels zeroed) with a nested 4-class lesion."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor(masks, dtype=torch.bool)
    image = torch.randn(mask.shape[0], 4, size, size, size, generator=g)
    label = torch.zeros(mask.shape[0], size, size, size, dtype=torch.long)
    q = size // 4
    outer, inner = slice(q, 3 * q), slice(q + q // 2, 3 * q - q // 2)
    core = slice(2 * q - 1, 2 * q + 1)
    label[:, outer, outer, outer] = 2
    label[:, inner, inner, inner] = 1
    label[:, core, core, core] = 3
    return {"image": image * mask[:, :, None, None, None], "label": label, "mask": mask}


def train_backbone(name: str, backbone: str = "rfnet", **options):
    """Three AdamW steps of a small backbone (batch 2, IDT masks) under objective ``name``.

    Returns:
        ``(objective, net, results)``; asserts that every loss, gradient and parameter
        stays finite along the way.
    """
    torch.manual_seed(0)
    net = pk.build_backbone(backbone, **SMALL[backbone])
    size = SMALL[backbone]["patch_size"]
    objective = build_objective(name, num_modalities=4, num_classes=4, **options)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)
    results = []
    # One intra-op thread: on a shared 2-core machine, two spinning threads make these
    # tiny convolutions 10-50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed, masks in enumerate(IDT_STEPS):
            opt.zero_grad(set_to_none=True)
            result = objective(rfnet_batch(masks, seed, size), net)
            result.loss.backward()
            objective.after_backward(net)
            assert torch.isfinite(result.loss), (name, backbone, seed)
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), (name, backbone, seed)
            opt.step()
            results.append(result)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    return objective, net, results

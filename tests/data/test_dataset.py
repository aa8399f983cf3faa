from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from passion_kit.data.dataset import PreparedDataset, load_split
from passion_kit.data.description import PHANTOM
from passion_kit.data.prepared import read_case
from passion_kit.data.transforms import TrainAugment

MS = PHANTOM.modalities


def test_batch_format(phantom_root):
    ds = PreparedDataset(
        phantom_root, "train", setting="idt", missing_rates="mr2468", augment=TrainAugment(16)
    )
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    assert batch["image"].shape == (3, 4, 16, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (3, 16, 16, 16) and batch["label"].dtype == torch.int64
    assert batch["mask"].shape == (3, 4) and batch["mask"].dtype == torch.bool
    assert batch["case_id"] == ds.case_ids[:3]


def test_idt_uses_the_fixed_row_and_zeroes_absent_channels(phantom_root):
    split = load_split(phantom_root, "mr2468")
    ds = PreparedDataset(phantom_root, "train", setting="idt", missing_rates=split)
    for i in range(len(ds)):
        item = ds[i]
        mask = split.mask_of(item["case_id"])
        assert tuple(item["mask"].tolist()) == mask
        image, _, _ = read_case(phantom_root, item["case_id"])
        for m, present in enumerate(mask):
            if present:
                assert np.array_equal(item["image"][m].numpy(), image[m])
            else:
                assert not item["image"][m].any()


def test_idt_drop_draws_subsets_of_the_row(phantom_root):
    split = load_split(phantom_root, "mr1379")
    ds = PreparedDataset(phantom_root, "train", setting="idt_drop", missing_rates=split)
    torch.manual_seed(0)
    drawn = {}
    for _ in range(150):
        for i in range(len(ds)):
            item = ds[i]
            row, mask = split.mask_of(item["case_id"]), tuple(item["mask"].tolist())
            assert any(mask) and all(r or not m for r, m in zip(row, mask, strict=True))
            assert all(item["image"][m].any() == mask[m] for m in range(4))
            drawn.setdefault(item["case_id"], set()).add(mask)
    for cid, masks in drawn.items():  # every subset of the row turns up
        assert masks == {MS.mask(k) for k in MS.subset_ids(split.mask_of(cid))}


def test_pdt_keeps_every_channel_and_draws_all_combinations(phantom_root):
    ds = PreparedDataset(phantom_root, "train", setting="pdt")
    torch.manual_seed(0)
    masks = set()
    for _ in range(300):
        item = ds[0]
        assert all(item["image"][m].any() for m in range(4))
        masks.add(tuple(item["mask"].tolist()))
    assert len(masks) == 15
    n_m, n = ds.availability()
    assert n == 6 and n_m.tolist() == [6, 6, 6, 6]


def test_availability_counts_the_split(phantom_root):
    split = load_split(phantom_root, "mr2468")
    ds = PreparedDataset(phantom_root, "train", setting="idt", missing_rates="mr2468")
    n_m, n = ds.availability()
    assert n == len(split) == 6
    assert n_m.tolist() == [split.availability_counts()[m] for m in MS.modalities]


def test_full_setting_and_explicit_case_list(phantom_root):
    ds = PreparedDataset(phantom_root, ["phantom_0009"], setting="full")
    item = ds[0]
    assert item["mask"].all() and item["image"].shape == (4, 32, 32, 32)


def test_seeding_makes_samples_reproducible(phantom_root):
    ds = PreparedDataset(
        phantom_root, "train", setting="pdt", augment=TrainAugment(12, jitter="channel")
    )
    torch.manual_seed(7)
    a = ds[1]
    torch.manual_seed(7)
    b = ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    c = ds[1]
    assert not torch.equal(a["image"], c["image"])


def test_workers_do_not_repeat_each_other(phantom_root):
    ds = PreparedDataset(
        phantom_root, ["phantom_0000"] * 1, setting="pdt", augment=TrainAugment(12)
    )
    loader = DataLoader(torch.utils.data.ConcatDataset([ds] * 4), batch_size=1, num_workers=2)
    torch.manual_seed(0)
    images = [b["image"] for b in loader]
    assert len({float(x.sum()) for x in images}) == 4


def test_dataset_errors(phantom_root):
    with pytest.raises(ValueError, match="setting"):
        PreparedDataset(phantom_root, setting="random")
    with pytest.raises(ValueError, match="needs missing_rates"):
        PreparedDataset(phantom_root, setting="idt")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        PreparedDataset(phantom_root, ["phantom_0999"], setting="full")
    with pytest.raises(ValueError, match="no row in the missing-rate split"):
        PreparedDataset(phantom_root, "test", setting="idt", missing_rates="mr2468")
    with pytest.raises(FileNotFoundError, match="mr0000.csv"):
        PreparedDataset(phantom_root, setting="idt", missing_rates="mr0000")
    ds = PreparedDataset(phantom_root, "train", setting="pdt", augment=TrainAugment(40))
    with pytest.raises(ValueError, match="case phantom_0000: patch_size"):
        ds[0]


@pytest.mark.parametrize("split", ["../../outside", "/etc/passwd", ""])
def test_a_split_name_cannot_leave_the_splits_folder(phantom_root, split):
    with pytest.raises(ValueError, match="expected the name of a case list under"):
        PreparedDataset(phantom_root, split, setting="full")

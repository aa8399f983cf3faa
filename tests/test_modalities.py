from __future__ import annotations

import pytest

from passion_kit.data.modalities import BRATS, MYOPS, ModalitySet, default_combinations


def test_brats_table_matches_the_official_ids():
    expected = {
        0: "t2",
        1: "t1c",
        2: "t1",
        3: "flair",
        4: "t1c+t2",
        5: "t1c+t1",
        6: "flair+t1",
        7: "t1+t2",
        8: "flair+t2",
        9: "flair+t1c",
        10: "flair+t1c+t1",
        11: "flair+t1+t2",
        12: "flair+t1c+t2",
        13: "t1c+t1+t2",
        14: "all",
    }
    assert {i: BRATS.name(i) for i in range(15)} == expected
    for i in range(15):
        assert BRATS.mask_id(BRATS.mask(i)) == i
        assert BRATS.id_from_name(BRATS.name(i)) == i
    assert BRATS.mask(10) == (True, True, True, False)
    # official pos_mask_ids of [True, True, True, False]
    assert BRATS.subset_ids([True, True, True, False]) == [1, 2, 3, 5, 6, 9, 10]


def test_myops_table_and_default_order():
    assert MYOPS.names() == ["t2", "lge", "bssfp", "lge+t2", "bssfp+lge", "bssfp+t2", "all"]
    assert MYOPS.subset_ids([False, True, True]) == [0, 1, 3]
    five = ModalitySet(("a", "b", "c", "d", "e"))
    assert five.num_combinations == 31
    assert five.name(0) == "a" and five.name(5) == "a+b" and five.name(30) == "all"
    assert default_combinations(2) == ((True, False), (False, True), (True, True))
    assert BRATS.mask_tensor().shape == (15, 4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="mask_id must be in"):
        BRATS.mask(15)
    with pytest.raises(ValueError, match="4 entries"):
        BRATS.mask_id([True, False])
    with pytest.raises(ValueError, match="at least one"):
        BRATS.mask_id([False] * 4)
    with pytest.raises(ValueError, match="unknown modality"):
        BRATS.index("pd")
    with pytest.raises(ValueError, match="exactly once"):
        ModalitySet(("a", "b"), combinations=((True, False), (True, False), (True, True)))

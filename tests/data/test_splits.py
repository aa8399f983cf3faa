from __future__ import annotations

import itertools

import numpy as np
import pytest

from passion_kit.data import splits
from passion_kit.data.description import BRATS2020, MYOPS2020, DatasetDescription
from passion_kit.data.modalities import ModalitySet

BRATS_NAMES = ("mr1379", "mr2258", "mr2285", "mr2468", "mr5528", "mr5582", "mr8825", "mr8852")


@pytest.fixture(scope="module")
def train_ids() -> list[str]:
    return splits.read_case_ids(splits.shipped("brats2020/train.txt"))


def test_shipped_case_lists_are_the_official_split(train_ids):
    val = splits.read_case_ids(splits.shipped("brats2020/val.txt"))
    test = splits.read_case_ids(splits.shipped("brats2020/test.txt"))
    assert (len(train_ids), len(val), len(test)) == (219, 50, 100)
    assert not (set(train_ids) & set(val)) and not (set(train_ids) & set(test))


@pytest.mark.parametrize("name", BRATS_NAMES)
def test_generator_reproduces_published_brats2020_split(name, train_ids, tmp_path):
    published = splits.shipped(f"brats2020/Brats2020_imb_split_{name}.csv")
    expected = splits.read_split(published, BRATS2020.modalities)
    got = splits.generate_missing_rate_split(train_ids, splits.rates_from_name(name), seed=1037)
    assert got.case_ids == expected.case_ids
    assert got.masks == expected.masks  # row for row
    # ... and in the official format, byte for byte (CRLF, quoting, list strings).
    out = splits.write_split(got, tmp_path / "s.csv", fmt="official")
    assert out.read_bytes() == published.read_bytes()


def test_generator_reproduces_brats2018_given_its_case_list():
    for name in ("mr1379", "mr2468"):
        pub = splits.read_split(
            splits.shipped(f"brats2018/Brats2018_imb_split_{name}.csv"), BRATS2020.modalities
        )
        got = splits.generate_missing_rate_split(pub.case_ids, splits.rates_from_name(name))
        assert got.masks == pub.masks


def test_mr2468_counts_match_spec(train_ids):
    s = splits.generate_missing_rate_split(train_ids, splits.rates_from_name("mr2468"))
    assert s.availability_counts() == {"flair": 90, "t1c": 135, "t1": 184, "t2": 43}
    counts = [s.mask_ids().count(i) for i in range(15)]
    assert counts == [2, 12, 38, 6, 3, 53, 23, 9, 1, 9, 35, 5, 2, 12, 9]


def test_another_seed_gives_another_split(train_ids):
    a = splits.generate_missing_rate_split(train_ids, splits.rates_from_name("mr2468"))
    b = splits.generate_missing_rate_split(train_ids, splits.rates_from_name("mr2468"), seed=7)
    assert a.masks != b.masks


def test_case_order_does_not_matter(train_ids):
    rates = splits.rates_from_name("mr2468")
    a = splits.generate_missing_rate_split(train_ids, rates)
    b = splits.generate_missing_rate_split(list(reversed(train_ids)), rates)
    assert a == b


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_generator_works_for_any_number_of_modalities(m):
    names = tuple(f"mod{i}" for i in range(m))
    desc = DatasetDescription(
        name="toy",
        modalities=ModalitySet(names),
        classes=("bg", "fg"),
        regions={"FG": (1,)},
        label_mapping={0: 0, 1: 1},
    )
    rates = {n: 0.1 + 0.15 * i for i, n in enumerate(names)}
    ids = [f"case{i:04d}" for i in range(2000)]
    s = splits.generate_missing_rate_split(ids, rates, desc, seed=0)
    assert len(s) == 2000 and all(any(row) for row in s.masks)
    # Realised rates stay close to nominal (below it: all-missing rows get redrawn).
    for n, p in s.missing_rates().items():
        assert p <= rates[n] + 0.02 and p >= rates[n] - 0.1, (n, p, rates[n])


def test_extreme_rates_and_bad_rates():
    ids = [f"c{i}" for i in range(50)]
    rates = {"flair": 0.0, "t1c": 1.0, "t1": 0.5, "t2": 0.5}
    s = splits.generate_missing_rate_split(ids, rates)
    # The official max(1, ...) rule gives patterns of probability 0 a case too.
    counts = s.availability_counts()
    assert 50 - 7 <= counts["flair"] < 50 and 0 < counts["t1c"] <= 8
    tiny = splits.generate_missing_rate_split(ids[:5], splits.rates_from_name("mr2468"))
    assert len(tiny) == 5 and all(any(m) for m in tiny.masks)
    with pytest.raises(ValueError, match="at least one modality"):
        splits.generate_missing_rate_split(ids, dict.fromkeys(rates, 1.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        splits.generate_missing_rate_split(ids, {**rates, "t2": 1.5})
    with pytest.raises(ValueError, match="must name each"):
        splits.generate_missing_rate_split(ids, {"flair": 0.5})


def test_grouped_generation_shares_one_row_per_patient():
    ids = [f"myops_training_{p}_slice_{z}" for p in range(101, 131) for z in range(4)]
    s = splits.generate_missing_rate_split(
        ids, splits.rates_from_name("357", MYOPS2020), MYOPS2020, group_of=splits.patient_of
    )
    by_patient: dict[str, set] = {}
    for cid, mask in zip(s.case_ids, s.masks, strict=True):
        by_patient.setdefault(splits.patient_of(cid), set()).add(mask)
    assert len(by_patient) == 30 and all(len(v) == 1 for v in by_patient.values())


def test_shipped_myops_splits_share_rows_per_patient():
    train = splits.read_case_ids(splits.shipped("myops2020/MyoPS2020_train.txt"))
    for digits in ("357", "375", "537", "573", "735", "753"):
        s = splits.read_split(
            splits.shipped(f"myops2020/MyoPS2020_longtail_split_{digits}.csv"), MYOPS2020.modalities
        )
        assert list(s.case_ids) == train
        for _, rows in itertools.groupby(
            zip(s.case_ids, s.masks, strict=True), lambda r: splits.patient_of(r[0])
        ):
            assert len({m for _, m in rows}) == 1
    assert splits.read_split(
        splits.shipped("myops2020/MyoPS2020_longtail_split_357.csv"), MYOPS2020.modalities
    ).availability_counts() == {"bssfp": 64, "lge": 46, "t2": 26}


def test_readable_and_official_round_trip(train_ids, tmp_path):
    s = splits.generate_missing_rate_split(train_ids[:40], splits.rates_from_name("mr1379"))
    for fmt in splits.FORMATS:
        path = splits.write_split(s, tmp_path / f"{fmt}.csv", fmt=fmt)
        assert splits.read_split(path, BRATS2020.modalities) == s
    text = (tmp_path / "readable.csv").read_text().splitlines()
    assert text[0] == "case_id,mask_id,flair,t1c,t1,t2"
    cid, mid, *flags = text[1].split(",")
    assert BRATS2020.modalities.mask_id([f == "True" for f in flags]) == int(mid)


def test_write_never_appends(train_ids, tmp_path):
    s = splits.generate_missing_rate_split(train_ids, splits.rates_from_name("mr2468"))
    path = splits.write_split(s, tmp_path / "s.csv")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        splits.write_split(s, path)
    assert path.read_bytes() == before
    splits.write_split(s, path, overwrite=True)
    assert path.read_bytes() == before  # one header, no duplicated rows
    assert path.read_text().count("case_id") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,b\n", "unknown header"),
        ("case_id,mask_id,flair,t1c,t1,t2\nc1,3,True,False,False\n", "line 2: expected 6"),
        ("case_id,mask_id,flair,t1c,t1,t2\nc1,3,yes,False,False,False\n", "line 2, column 'flair'"),
        ("case_id,mask_id,flair,t1c,t1,t2\nc1,4,True,False,False,False\n", "does not match"),
        ("case_id,mask_id,flair,t1c,t1,t2\nc1,3,False,False,False,False\n", "at least one"),
        (
            "case_id,mask_id,flair,t1c,t1,t2\nc1,3,True,False,False,False\n"
            "c1,3,True,False,False,False\n",
            "duplicate",
        ),
        (
            'data_name,mask_id,mask,pos_mask_ids\nc1,9,"[True, True, False, False]","[1, 3]"\n',
            "pos_mask_ids",
        ),
        ('data_name,mask_id,mask,pos_mask_ids\nc1,9,"True, True",[9]\n', "expected a list"),
    ],
)
def test_read_split_errors_name_file_and_line(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        splits.read_split(path, BRATS2020.modalities)
    assert str(path) in str(err.value)


def test_parse_missing_rates_and_names():
    ms = BRATS2020.modalities
    rates = splits.parse_missing_rates("flair=0.6, t1c=0.4,t1=0.2,t2=0.8", ms)
    assert rates == splits.rates_from_name("mr2468")
    assert splits.rate_name(rates) == "mr2468"
    assert splits.rates_from_name("357", MYOPS2020) == {"bssfp": 0.3, "lge": 0.5, "t2": 0.7}
    for bad in ("flair=0.6", "flair=0.6,flair=0.1,t1=0.2,t2=0.8", "t3=0.1,flair=0.6,t1=0.2,t2=0.8"):
        with pytest.raises(ValueError):
            splits.parse_missing_rates(bad, ms)
    with pytest.raises(ValueError, match="4 digits"):
        splits.rates_from_name("mr246")


def test_summary_and_case_list_check(train_ids):
    s = splits.generate_missing_rate_split(train_ids, splits.rates_from_name("mr2468"))
    text = splits.split_summary(s, train_ids)
    assert "flair          90  0.589" in text and "58/98/54/9" in text
    with pytest.raises(ValueError, match="1 unexpected"):
        splits.split_summary(s, train_ids[:-1])


def test_mask_of_and_errors():
    s = splits.MissingRateSplit(
        BRATS2020.modalities, ("a", "b"), ((True,) * 4, (False, True, False, False))
    )
    assert s.mask_of("b") == (False, True, False, False)
    assert s.mask_ids() == [14, 1]
    with pytest.raises(KeyError, match="'c'"):
        s.mask_of("c")
    with pytest.raises(ValueError, match="case b"):
        splits.MissingRateSplit(BRATS2020.modalities, ("a", "b"), ((True,) * 4, (False,) * 4))
    assert np.isclose(s.missing_rates()["t1c"], 0.0)

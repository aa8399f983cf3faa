from __future__ import annotations

import json

import pytest

from passion_kit.data.description import (
    BRATS2020,
    BUILTIN,
    MSD_TASK01,
    MYOPS2020,
    PHANTOM,
    DatasetDescription,
    data_root,
    load_description,
    save_description,
)
from passion_kit.data.modalities import ModalitySet


def test_brats_regions_classes_and_table():
    assert BRATS2020.regions == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert BRATS2020.label_mapping == {0: 0, 1: 1, 2: 2, 4: 3}
    assert BRATS2020.modalities.modalities == ("flair", "t1c", "t1", "t2")
    assert BRATS2020.split_order == ("t1", "t1c", "flair", "t2")
    assert BRATS2020.num_classes == 4 and BRATS2020.kind == "volume"


def test_myops_description_follows_myops_md():
    assert MYOPS2020.modalities.modalities == ("bssfp", "lge", "t2")
    assert MYOPS2020.regions == {"LVB": (2,), "RVB": (3,), "MYO": (1, 4, 5)}
    assert MYOPS2020.label_mapping == {0: 0, 200: 1, 500: 2, 600: 3, 1220: 4, 2221: 5}
    assert MYOPS2020.kind == "slice" and MYOPS2020.modalities.num_combinations == 7


def test_msd_maps_edema_and_non_enhancing_differently_from_brats():
    assert MSD_TASK01.label_mapping == {0: 0, 1: 2, 2: 1, 3: 3}
    assert MSD_TASK01.regions == BRATS2020.regions


@pytest.mark.parametrize("desc", list(BUILTIN.values()), ids=list(BUILTIN))
def test_json_round_trip(desc, tmp_path):
    path = save_description(desc, tmp_path)
    obj = json.loads(path.read_text())
    assert obj["combinations"][0]["name"] == desc.modalities.name(0)
    back = load_description(tmp_path)
    assert back == desc
    assert load_description(path) == desc  # the file itself works too


def test_load_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_description(tmp_path)
    path = save_description(PHANTOM, tmp_path)
    obj = json.loads(path.read_text())
    del obj["regions"]
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"dataset.json: missing key\(s\) \['regions'\]"):
        load_description(tmp_path)
    obj = json.loads(save_description(PHANTOM, tmp_path).read_text())
    obj["regions"]["WT"] = [1, 9]
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="region 'WT'"):
        load_description(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_description(tmp_path)


def test_invalid_descriptions_are_refused():
    kw = dict(name="x", modalities=ModalitySet(("a", "b")), classes=("bg", "fg"),
              regions={"FG": (1,)}, label_mapping={0: 0, 1: 1})  # fmt: skip
    DatasetDescription(**kw)
    with pytest.raises(ValueError, match="kind"):
        DatasetDescription(**kw, kind="movie")
    with pytest.raises(ValueError, match="split_order"):
        DatasetDescription(**kw, split_order=("a", "c"))
    with pytest.raises(ValueError, match="label_mapping"):
        DatasetDescription(**{**kw, "label_mapping": {0: 0, 1: 5}})


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("PASSION_KIT_DATA", raising=False)
    assert str(data_root()) == "data"
    monkeypatch.setenv("PASSION_KIT_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert str(data_root("elsewhere")) == "elsewhere"

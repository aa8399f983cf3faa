"""Property tests: any name or config value either is accepted and safe, or is refused
with the one error a user sees (a ``ValueError`` naming the key), never anything else."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passion_kit.config import ExperimentConfig, UsageError
from passion_kit.io import check_name, inside

ROOT = Path("/tmp/passion-kit-root")

# Names built from the characters that matter for paths, and anything at all.
path_like = st.text(alphabet=string.ascii_letters + "./\\_- ~\0", max_size=40)
names = st.one_of(path_like, st.text(max_size=300))


@given(names)
def test_a_name_is_refused_or_stays_one_part_inside_its_root(name):
    try:
        checked = check_name(name, "the name")
    except ValueError as exc:
        assert "the name" in str(exc)
        return
    assert checked == name and len(name.encode()) <= 255
    path = inside(ROOT, "runs", name, what="a run")
    assert path.parent == ROOT / "runs" and path.name == name


@given(st.lists(path_like, min_size=1, max_size=4))
def test_inside_never_returns_a_path_outside_its_root(parts):
    try:
        path = inside(ROOT, *parts, what="x")
    except ValueError:
        return
    assert path.resolve().is_relative_to(ROOT.resolve())


KEYS = sorted(
    f"{section}.{key}" for section, values in ExperimentConfig().to_dict().items() for key in values
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), json_values)
def test_an_override_is_accepted_and_valid_or_refused_naming_its_key(key, value):
    cfg = ExperimentConfig.preset("cpu")
    try:
        cfg.override([f"{key}={json.dumps(value)}"])
    except UsageError as exc:
        assert key in str(exc)
        return
    cfg.validate()  # what override accepted passes the same checks again
    assert json.loads(cfg.to_json())  # and can be written to config.json


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_any_override_text_is_accepted_or_a_usage_error(item):
    try:
        ExperimentConfig.preset("cpu").override([item])
    except UsageError:
        pass


@pytest.mark.parametrize("key", ["data.dataset", "train.name", "data.test_split"])
@given(name=path_like)
def test_a_name_key_never_leads_outside_the_run_root(key, name):
    try:
        cfg = ExperimentConfig.preset("cpu").override([f"{key}={json.dumps(name)}"])
    except UsageError:
        return
    run = inside(ROOT, cfg.run_name(), what="the run folder")
    assert run.parent == ROOT

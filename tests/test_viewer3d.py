"""The 3-D view: NIfTI bytes, class colours and the NiiVue volumes it sends (no browser)."""

from __future__ import annotations

import gzip
import sys

import nibabel as nib
import numpy as np
import pytest

from passion_kit.data.description import PHANTOM
from passion_kit.data.phantom import generate_case
from passion_kit.lessons.viewer3d import (
    OVERLAY_OPACITY,
    CaseView3D,
    class_colors,
    label_colormap,
    nifti_bytes,
    niivue_missing,
)
from passion_kit.lessons.viz import REGION_COLORS


@pytest.fixture(autouse=True)
def _niivue(request):
    """The view's tests need ipyniivue; the file and colour tests do not."""
    if "case" in request.fixturenames:
        pytest.importorskip("ipyniivue")


def decoded(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def view_centre(label):
    """The slices with the most tumour voxels, computed here independently."""
    fg = label > 0
    return [fg.sum(axis=tuple(a for a in range(3) if a != k)).argmax() for k in range(3)]


@pytest.fixture(scope="module")
def case():
    image, label = generate_case(3, size=24)
    return image, label


def test_nifti_bytes_round_trip_values_types_and_spacing():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 6, 7)).astype(np.float64)
    back = decoded(nifti_bytes(image, spacing=(1.0, 2.0, 0.5)))
    assert back.shape == (5, 6, 7) and back.get_data_dtype() == np.float32
    np.testing.assert_allclose(back.get_fdata(), image.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(np.diag(back.affine), [1.0, 2.0, 0.5, 1.0])
    label = rng.integers(0, 4, size=(5, 6, 7))
    back = decoded(nifti_bytes(label))
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(back.dataobj), label)


@pytest.mark.parametrize(
    ("volume", "kwargs", "match"),
    [
        (np.zeros((4, 4)), {}, "volume must be"),
        (np.full((2, 2, 2), 300), {}, "0..255"),
        (np.zeros((2, 2, 2)), {"spacing": (1.0, 0.0, 1.0)}, "spacing"),
    ],
)
def test_nifti_bytes_checks_its_inputs(volume, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nifti_bytes(volume, **kwargs)


def test_each_class_takes_the_colour_of_its_smallest_region():
    assert class_colors(PHANTOM.regions) == {
        1: REGION_COLORS["TC"],  # necrosis: in TC and WT
        2: REGION_COLORS["WT"],  # edema: in WT only
        3: REGION_COLORS["ET"],  # enhancing: in ET, TC and WT
    }
    cmap = label_colormap(PHANTOM.regions)
    assert cmap["I"] == [0, 1, 2, 3] and cmap["A"] == [0, 255, 255, 255]
    assert (cmap["R"][3], cmap["G"][3], cmap["B"][3]) == (0xD5, 0x5E, 0x00)  # ET #D55E00


def test_the_view_sends_the_case_as_three_nifti_volumes(case):
    image, label = case
    prediction = np.where(label == 2, 0, label).astype(np.uint8)  # no edema predicted
    view = CaseView3D(image[0], label, prediction, regions=PHANTOM.regions, name="flair")
    names = [v.name for v in view.viewer.volumes]
    assert names == ["flair.nii.gz", "label.nii.gz", "prediction.nii.gz"]
    shown = [np.asarray(decoded(v.data).dataobj) for v in view.viewer.volumes]
    np.testing.assert_allclose(shown[0], image[0], rtol=1e-6)
    assert np.array_equal(shown[1], label) and np.array_equal(shown[2], prediction)
    assert view.viewer.volumes[1].colormap_label.lut[4 * 3 : 4 * 3 + 4] == [0xD5, 0x5E, 0, 255]
    centre = [(int(c) + 0.5) / n for c, n in zip(view_centre(label), label.shape, strict=True)]
    assert view.viewer.scene.crosshair_pos == pytest.approx(centre)
    assert [v.opacity for v in view.viewer.volumes] == [1.0, 0.0, OVERLAY_OPACITY]
    view.overlay_picker.value = "label"
    assert [v.opacity for v in view.viewer.volumes] == [1.0, OVERLAY_OPACITY, 0.0]
    assert view.webgl2 is None  # no browser has drawn it


def test_a_new_prediction_replaces_only_the_prediction_volume(case):
    image, label = case
    view = CaseView3D(image[1], label, label, regions=PHANTOM.regions, name="t1c")
    before = [v.id for v in view.viewer.volumes]
    view.set_prediction(label)  # the same: nothing is sent again
    assert [v.id for v in view.viewer.volumes] == before
    other = (label > 0).astype(np.uint8) * 2
    view.set_prediction(other)
    after = view.viewer.volumes
    assert [v.id for v in after[:2]] == before[:2] and after[2].id != before[2]
    assert np.array_equal(np.asarray(decoded(after[2].data).dataobj), other)
    assert np.array_equal(view.volumes["prediction"], other)
    assert after[2].opacity == OVERLAY_OPACITY  # the new volume keeps the chosen overlay
    view.set_case(image[3], label, other, name="t2")  # another channel: the image is resent
    assert view.viewer.volumes[0].name == "t2.nii.gz" and view.viewer.volumes[0].id != before[0]
    with pytest.raises(ValueError, match="prediction must have shape"):
        view.set_prediction(other[:-1])
    with pytest.raises(ValueError, match="label must have shape"):
        CaseView3D(image[0], label[:-1], regions=PHANTOM.regions)


def test_without_a_prediction_the_label_is_shown(case):
    image, label = case
    view = CaseView3D(image[0], label, regions=PHANTOM.regions)
    assert view.overlay_picker.value == "label" and len(view.viewer.volumes) == 2
    assert view.viewer.volumes[1].opacity == OVERLAY_OPACITY
    with pytest.raises(ValueError, match="overlay must be one of"):
        CaseView3D(image[0], label, regions=PHANTOM.regions, overlay="mesh")


def test_the_missing_package_and_webgl_are_explained_in_one_line(monkeypatch):
    pytest.importorskip("ipyniivue")
    assert niivue_missing() == ""
    monkeypatch.setitem(sys.modules, "ipyniivue", None)  # an import now fails
    reason = niivue_missing()
    assert "ipyniivue" in reason and "2-D" in reason and "\n" not in reason
    from passion_kit.lessons import viewer3d

    probe = viewer3d._probe_class()()
    assert 'getContext("webgl2")' in viewer3d._PROBE_ESM and "WebGL2" in probe.message
    assert "\n" not in probe.message

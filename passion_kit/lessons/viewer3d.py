"""A 3-D view of one case: an image channel with the label and a prediction as overlays.

NiiVue (the ``ipyniivue`` widget, WebGL2 in the browser) draws NIfTI volumes, so every
volume is written to in-memory NIfTI bytes with nibabel (:func:`nifti_bytes`); nothing
touches the disk. The label and the prediction share one colour per class: the colour of
the smallest region that holds the class (:func:`class_colors`), so the 3-D overlay reads
like the 2-D one (ET orange inside TC blue inside WT green).

The view is optional. Where ``ipyniivue`` is not installed, :func:`niivue_missing` says so
in one line; where the browser has no WebGL2, a small probe next to the canvas replaces
it with one line of explanation (:class:`CaseView3D`). The 2-D views never need either.

Usage (JupyterLab)::

    from passion_kit.data.phantom import generate_case
    from passion_kit.data.description import PHANTOM
    from passion_kit.lessons.viewer3d import CaseView3D

    image, label = generate_case(0, size=48)
    view = CaseView3D(image[0], label, regions=PHANTOM.regions, name="flair")
    view                        # drag to rotate; the label as the overlay
    view.set_prediction(label)  # a prediction overlay (here: the label itself)
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Mapping, Sequence

import numpy as np

from passion_kit.lessons.viz import region_colors, tumour_centre

__all__ = [
    "HERO_FRACTION",
    "OVERLAYS",
    "OVERLAY_OPACITY",
    "CaseView3D",
    "class_colors",
    "label_colormap",
    "nifti_bytes",
    "niivue_missing",
]

OVERLAYS = ("prediction", "label")  # which overlay the view shows (both are loaded)
_ROLES = ("image", "label", "prediction")  # the volumes, bottom to top
OVERLAY_OPACITY = 0.9  # of the shown overlay; the other one is loaded at 0
HERO_FRACTION = 0.55  # the canvas width the volume rendering takes (the planes: the rest)
_NO_WEBGL = (
    "This browser offers no WebGL2, so the 3-D view cannot be drawn here; the 2-D slices "
    "need no WebGL."
)
# A tiny anywidget: asks the browser for a WebGL2 context, reports the answer to the kernel
# and, where there is none, shows one line of explanation instead of a blank canvas.
_PROBE_ESM = """
export default {
  render({ model, el }) {
    const ok = !!document.createElement("canvas").getContext("webgl2");
    model.set("webgl2", ok);
    model.save_changes();
    if (!ok) {
      el.innerHTML = model.get("message");
      el.className = "passion-kit-no-webgl";
    }
  },
};
"""


def niivue_missing() -> str:
    """``""`` where ``ipyniivue`` imports, else the one-line reason there is no 3-D view."""
    try:
        import ipyniivue  # noqa: F401
    except ImportError as error:
        return (
            f"The 3-D view needs the ipyniivue package ({error}); install it with "
            "pip install 'passion-kit[notebooks]'. The 2-D slices work without it."
        )
    return ""


def nifti_bytes(volume: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> bytes:
    """A gzipped NIfTI-1 file of ``volume`` (H, W, D), in memory.

    Integer volumes (labels) are stored as uint8, others as float32; the affine is the
    diagonal of ``spacing`` (the prepared cases are resampled to 1 mm, docs/method.md A.4).
    """
    import nibabel as nib

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (H, W, D), got shape {volume.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers, got {tuple(spacing)}")
    dtype = np.uint8 if np.issubdtype(volume.dtype, np.integer) else np.float32
    if dtype is np.uint8 and (volume.min() < 0 or volume.max() > 255):
        raise ValueError(f"a label volume must hold 0..255, got {volume.min()}..{volume.max()}")
    image = nib.Nifti1Image(volume.astype(dtype), np.diag([*map(float, spacing), 1.0]))
    return gzip.compress(image.to_bytes(), compresslevel=1)


def class_colors(regions: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """One colour per foreground class: that of the smallest region holding the class.

    With the BraTS regions (WT = {1, 2, 3}, TC = {1, 3}, ET = {3}): edema (2) gets the WT
    colour, necrosis (1) the TC colour, enhancing tumour (3) the ET colour, as the 2-D
    overlay of :func:`passion_kit.lessons.viz.plot_case` draws them.
    """
    colours = region_colors(list(regions))
    classes = sorted({int(c) for ids in regions.values() for c in ids})
    return {
        c: colours[
            min((r for r, ids in regions.items() if c in ids), key=lambda r: len(regions[r]))
        ]
        for c in classes
    }


def label_colormap(regions: Mapping[str, Sequence[int]]) -> dict:
    """The NiiVue label colormap (``R``, ``G``, ``B``, ``A``, ``I``, ``labels`` lists) of
    :func:`class_colors`; class 0 (background) transparent."""
    from matplotlib.colors import to_rgb

    colours = class_colors(regions)
    rgb = [(0, 0, 0)] + [tuple(round(255 * v) for v in to_rgb(colours[c])) for c in colours]
    return {
        "R": [c[0] for c in rgb],
        "G": [c[1] for c in rgb],
        "B": [c[2] for c in rgb],
        "A": [0] + [255] * len(colours),
        "I": [0, *colours],
        "labels": ["background"] + [f"class {c}" for c in colours],
    }


@functools.cache
def _probe_class():
    """The WebGL2 probe widget class (anywidget comes with ipyniivue)."""
    import anywidget
    import traitlets

    class WebGLProbe(anywidget.AnyWidget):
        _esm = _PROBE_ESM
        webgl2 = traitlets.Bool(None, allow_none=True).tag(sync=True)
        message = traitlets.Unicode(html.escape(_NO_WEBGL)).tag(sync=True)

    return WebGLProbe


class CaseView3D:
    """NiiVue view of one case: an image channel, its label and a prediction as overlays.

    The canvas shows a volume rendering (drag to rotate it) next to the three planes
    through the crosshair, which starts at the tumour's centre (click a plane to move it).

    Args:
        image: (H, W, D) the channel drawn in grey (e.g. FLAIR).
        label: (H, W, D) class ids of the ground truth.
        prediction: (H, W, D) predicted class ids (None: only the label is shown).
        regions: region name -> class ids (from the dataset description): the colours.
        name: the image's name in the viewer.
        height: canvas height in pixels.
        overlay: which overlay is shown first, one of :data:`OVERLAYS`.

    Raises:
        ImportError: ``ipyniivue`` is missing (:func:`niivue_missing` gives the reason).
    """

    def __init__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        prediction: np.ndarray | None = None,
        *,
        regions: Mapping[str, Sequence[int]],
        name: str = "image",
        height: int = 420,
        overlay: str = "prediction",
    ) -> None:
        import ipywidgets as w
        from ipyniivue import NiiVue, ShowRender, SliceType

        if overlay not in OVERLAYS:
            raise ValueError(f"overlay must be one of {OVERLAYS}, got {overlay!r}")
        self.regions = dict(regions)
        self._colormap = label_colormap(self.regions)
        self._volumes: dict[str, object] = {}  # role -> ipyniivue Volume
        self._arrays: dict[str, np.ndarray] = {}  # role -> the array it shows
        self._name = ""
        self.viewer = NiiVue(
            height=height,
            slice_type=SliceType.MULTIPLANAR,
            multiplanar_show_render=ShowRender.ALWAYS,
            is_colorbar=False,
            hero_image_fraction=HERO_FRACTION,
        )
        self.probe = _probe_class()()
        self.overlay_picker = w.ToggleButtons(
            options=list(OVERLAYS), value=overlay if prediction is not None else "label"
        )
        self.widget = w.VBox([self.probe, self.overlay_picker, self.viewer])  # the why first
        self.set_case(image, label, prediction, name=name)
        self.overlay_picker.observe(lambda _: self._apply_opacity(), "value")

    @property
    def webgl2(self) -> bool | None:
        """What the browser answered (None before the view was drawn)."""
        return self.probe.webgl2

    @property
    def volumes(self) -> dict[str, np.ndarray]:
        """The arrays shown, by role (``image``, ``label``, ``prediction``)."""
        return dict(self._arrays)

    def set_case(
        self,
        image: np.ndarray,
        label: np.ndarray,
        prediction: np.ndarray | None = None,
        *,
        name: str = "image",
    ) -> None:
        """Show another case or image channel; only the volumes that changed are re-sent."""
        image, label = np.asarray(image), np.asarray(label)
        if image.shape != label.shape:
            raise ValueError(f"label must have shape {image.shape}, got {label.shape}")
        changed = self._set("image", image, name)
        if self._set("label", label):  # a new case: the crosshair to its tumour's centre
            centre = tumour_centre(label)
            fractions = [(c + 0.5) / n for c, n in zip(centre, label.shape, strict=True)]
            self.viewer.scene.crosshair_pos = fractions
            changed = True
        if prediction is not None:
            changed |= self._set("prediction", prediction)
        else:
            changed |= self._volumes.pop("prediction", None) is not None
            self._arrays.pop("prediction", None)
        if changed:
            self._apply_opacity()
            self.viewer.volumes = [self._volumes[r] for r in _ROLES if r in self._volumes]

    def set_prediction(self, prediction: np.ndarray) -> None:
        """Replace the prediction overlay (the image and the label stay loaded)."""
        self.set_case(self._arrays["image"], self._arrays["label"], prediction, name=self._name)

    def _set(self, role: str, array: np.ndarray, name: str = "") -> bool:
        """Make the Volume of ``role`` unless it shows ``array`` already; True if made."""
        from ipyniivue import Volume

        array = np.asarray(array)
        if role != "image" and array.shape != self._arrays["image"].shape:
            raise ValueError(
                f"{role} must have shape {self._arrays['image'].shape}, got {array.shape}"
            )
        same = role in self._arrays and np.array_equal(array, self._arrays[role])
        if same and (role != "image" or name == self._name):
            return False
        if role == "image":
            low, high = np.percentile(array, [1, 99.5])  # robust grey window
            volume = Volume(
                data=nifti_bytes(array), name=f"{name}.nii.gz", colormap="gray",
                cal_min=float(low), cal_max=float(high),
            )  # fmt: skip
            self._name = name
        else:
            volume = Volume(data=nifti_bytes(array.astype(np.uint8)), name=f"{role}.nii.gz")
            volume.set_colormap_label(self._colormap)
        self._volumes[role], self._arrays[role] = volume, array.copy()
        return True

    def _apply_opacity(self) -> None:
        shown = self.overlay_picker.value
        for role in ("label", "prediction"):
            if role in self._volumes:
                self._volumes[role].opacity = OVERLAY_OPACITY if role == shown else 0.0

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

"""The explorer notebook in a real JupyterLab, driven by headless Chromium (Debian's chromium).

JupyterLab runs token-less on 127.0.0.1 only, with its config, data, runtime, settings
and workspace folders in a temporary directory. The notebook gets the smoke parameters
(papermill's injection, without executing), the browser runs all its cells, clicks
modality checkboxes and checks that the rendered overlay and Dice change, and that
unticking the last modality shows the refusal message. Then it opens the 3-D tab and
checks that NiiVue drew the case on its WebGL2 canvas (software WebGL: SwiftShader) and
that switching the overlay to the label draws the class colours. The screenshots are
kept in ``tests/artifacts/`` (git-ignored). Chromium comes from
``scripts/install_browser.sh``; the test skips only where that script cannot install it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.test_widgets import smoke_run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_missing_modality_explorer.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    # WebGL2 without a GPU for the 3-D view: ANGLE over SwiftShader, the software renderer
    # that recent Chromium no longer falls back to on its own.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MINUTE = 60_000  # Playwright timeouts are in milliseconds


def test_the_notebook_is_committed_clean_and_parametrised():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[1]  # after the one imports cell
    names = {line.split("=")[0].strip() for line in "".join(tagged[0]["source"]).splitlines()}
    assert {"data_root", "run_dir", "device", "smoke"} <= names
    first = "".join(notebook["cells"][0]["source"])
    assert first.startswith("# 08") and "CPU" in first and "GPU" in first and "RAM" in first
    assert "assert" in "".join(code[-1]["source"])  # the last cell checks what was shown


def _find_or_install_chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    script = ROOT / "scripts" / "install_browser.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1200)
    found = shutil.which("chromium")
    if result.returncode or not found:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"chromium cannot be installed here ({script.name}: {reason[0]})")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"JupyterLab did not answer on {url} in 120 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path, tmp_path_factory):
    """A token-less JupyterLab on 127.0.0.1 serving the notebook with smoke parameters."""
    import papermill

    run = smoke_run(tmp_path_factory)  # trained here, so the notebook only reloads it
    base = run.parent.parent
    served = tmp_path / "lab"
    served.mkdir()
    parameters = {"data_root": str(base / "data"), "run_dir": str(run.parent), "device": "cpu"}
    papermill.execute_notebook(  # injects the parameters, executes nothing
        str(NOTEBOOK),
        str(served / NOTEBOOK.name),
        parameters=parameters | {"smoke": True},
        kernel_name="python3",
        prepare_only=True,
    )
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(tmp_path / "jupyter" / name.lower())
    settings = tmp_path / "jupyter" / "settings"
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp_path / "jupyter" / "workspaces")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Every cell stays in the page (no virtual scrolling), so all outputs can be read; no
    # news toast over the screenshot.
    for plugin, values in (
        ("notebook-extension/tracker", {"windowingMode": "none"}),
        ("apputils-extension/notification", {"fetchNews": "false"}),
    ):
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = _free_port()
    log = tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1"]
            + [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
            + ["--IdentityProvider.token=", "--ServerApp.password="]
            + [f"--ServerApp.root_dir={served}", "--LabApp.news_url="]
            + ["--ServerApp.terminals_enabled=False"]
            + (["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, process, log)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _canvas_pixels(canvas) -> np.ndarray:
    """(H, W, 3) RGB of a screenshot of the canvas element."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"))


def _drawn(canvas) -> np.ndarray | None:
    """The canvas pixels once something is drawn: not uniform, many colours."""
    rgb = _canvas_pixels(canvas)
    return rgb if rgb.std() > 10 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50 else None


def _with_overlay(canvas) -> np.ndarray | None:
    """The canvas pixels once overlay colours show: saturated pixels that are not the red
    crosshair (the grey image and the black background have none)."""
    rgb = _canvas_pixels(canvas)
    channels = rgb.astype(int)
    saturated = channels.max(-1) - channels.min(-1) > 60
    red = (channels[..., 0] > 180) & (channels[..., 1] < 60) & (channels[..., 2] < 60)
    return rgb if (saturated & ~red).mean() > 0.002 else None


def _wait_for(pixels, canvas, what: str, timeout_s: float = 120.0) -> np.ndarray:
    """Poll ``pixels(canvas)`` until it answers (software WebGL can take seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = pixels(canvas)
        if found is not None:
            return found
        time.sleep(1)
    pytest.fail(f"{what} within {timeout_s:.0f} s")


def _drive_3d(page, expect, widget, screenshot: Path) -> None:
    """Open the 3-D tab; check the canvas is drawn and the label overlay shows its colours."""
    page.get_by_role("tab", name="3-D view").click()
    canvas = widget.locator("canvas").first
    expect(canvas).to_be_visible(timeout=2 * MINUTE)
    expect(widget.locator(".passion-kit-no-webgl")).to_have_count(0)  # the probe found WebGL2
    canvas.scroll_into_view_if_needed()
    drawn = _wait_for(_drawn, canvas, "the 3-D canvas was not drawn (a uniform picture)")
    widget.get_by_role("button", name="label", exact=True).click()
    labelled = _wait_for(_with_overlay, canvas, "no label colours on the 3-D canvas")
    assert not np.array_equal(drawn, labelled)
    widget.screenshot(path=str(screenshot))


def _drive(page, expect, url: str, screenshot: Path, screenshot_3d: Path) -> None:
    """Open the notebook, run every cell, click checkboxes, check what the page shows."""
    page.goto(f"{url}/lab/tree/{NOTEBOOK.name}", timeout=2 * MINUTE)
    kernel = page.get_by_role("button", name=re.compile(r"Python 3.*\| Idle"))
    expect(kernel.first).to_be_visible(timeout=2 * MINUTE)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    first_prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
    expect(first_prompt).not_to_have_text("[ ]:", timeout=MINUTE)  # execution started
    outputs = page.locator(".jp-OutputArea-output")
    page.wait_for_function(  # the last cell's print, or a failed cell
        "() => /toggle answered in|Traceback/.test([...document.querySelectorAll("
        "'.jp-OutputArea-output')].map(e => e.innerText).join())",
        timeout=5 * MINUTE,
    )
    text = "\n".join(outputs.all_inner_texts())
    assert "Traceback" not in text, f"a cell failed in JupyterLab:\n{text[-3000:]}"

    dice = page.locator(".widget-html-content", has_text="Dice with")
    image = page.locator("img.widget-image")
    expect(dice).to_contain_text("all modalities")  # the notebook's last state
    before_dice, before_image = dice.inner_text(), image.get_attribute("src")
    boxes = {
        name: page.get_by_role("checkbox", name=name, exact=True)
        for name in ("flair", "t1c", "t1", "t2")
    }
    boxes["flair"].click()
    expect(dice).to_contain_text(re.compile(r"with t1c\+t1\+t2:"), timeout=2 * MINUTE)
    expect(image).not_to_have_attribute("src", before_image)
    assert dice.inner_text() != before_dice
    expect(boxes["flair"]).not_to_be_checked()

    boxes["t1c"].click()
    expect(dice).to_contain_text(re.compile(r"with t1\+t2:"), timeout=2 * MINUTE)
    boxes["t1"].click()
    expect(dice).to_contain_text(re.compile(r"with t2:"), timeout=2 * MINUTE)
    boxes["t2"].click()  # the last one: refused, with a visible message
    message = page.locator(".widget-html-content", has_text="At least one modality")
    expect(message).to_be_visible(timeout=MINUTE)
    expect(boxes["t2"]).to_be_checked()

    widget = page.locator(".widget-vbox", has=image).last
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(screenshot))
    _drive_3d(page, expect, widget, screenshot_3d)


@pytest.fixture
def chromium() -> str:
    return _find_or_install_chromium()


@pytest.mark.slow
def test_explorer_notebook_runs_and_reacts_to_clicks_in_jupyterlab(chromium, lab, tmp_path, capsys):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]'")
    url, log = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "explorer_browser.png"
    screenshot_3d = ARTIFACTS / "explorer_browser_3d.png"
    for path in (screenshot, screenshot_3d):
        path.unlink(missing_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1700, "height": 1100},
        )
        page = context.pages[0] if context.pages else context.new_page()
        try:
            _drive(page, expect, url, screenshot, screenshot_3d)
        except Exception:
            failure = ARTIFACTS / "explorer_browser_failure.png"
            page.screenshot(path=str(failure), full_page=True)
            print(f"failure screenshot: {failure}\nJupyterLab log:\n{log.read_text()[-3000:]}")
            raise
        finally:
            context.close()
    for path in (screenshot, screenshot_3d):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():
        print(f"\n[explorer] browser screenshots: {screenshot}, {screenshot_3d}")

"""The web map in a real browser: Debian's Chromium driven by Playwright against uvicorn.

Draws a box with the mouse, submits a job, waits for it, checks the prediction overlay is drawn
in the class colours, and fails on any JS error or console error. Needs the MapLibre files
(`npm ci --prefix web && npm run --prefix web build`) and /usr/bin/chromium
(`apt-get install -y chromium`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_support import (
    CLASS_COLORS,
    PredictRequest,
    fake_card,
    fake_predict,
    hex_rgb,
    make_models,
    running_server,
)
from terrastill.app.main import PACKAGED_STATIC, create_app
from terrastill.app.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
AOI = (10.00, 45.00, 10.06, 45.04)

# every browser test: real Chromium and the built web map, or a skip saying what is missing
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        not (PACKAGED_STATIC / "vendor" / "maplibre-gl.js").exists(),
        reason="web map not built: npm ci --prefix web && npm run --prefix web build",
    ),
]
pytestmark = BROWSER_MARKS


def _slow_predict(request, progress=None, cancel=None):
    return fake_predict(request, progress, cancel, delay=0.15)


def _color_share(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> float:
    diff = np.abs(img[..., :3].astype(int) - np.array(rgb)).max(axis=-1)
    return float((diff <= tol).mean())


@pytest.fixture()
def server(tmp_path):
    settings = Settings(models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data")
    app = create_app(
        settings, predict_fn=_slow_predict, request_cls=PredictRequest, read_card=fake_card
    )
    with running_server(app) as url:
        yield url


def test_draw_submit_and_view(server, tmp_path):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            expect_422 = [False]  # while on, the browser's own "status of 422" line is expected

            def on_console(msg):
                if msg.type != "error":
                    return
                if expect_422[0] and "status of 422" in msg.text:
                    return
                errors.append(f"console.{msg.type}: {msg.text}")

            page.on("console", on_console)
            tile_responses: list[tuple[int, str]] = []
            page.on(
                "response",
                lambda r: (
                    tile_responses.append((r.status, r.headers.get("content-type", "")))
                    if "/tiles/" in r.url
                    else None
                ),
            )
            cx, cy = (AOI[0] + AOI[2]) / 2, (AOI[1] + AOI[3]) / 2
            page.goto(f"{server}/#12/{cy}/{cx}")
            page.wait_for_function("() => window.terrastill && window.terrastill.map.loaded()")
            page.wait_for_selector("#model-select option[value='student']", state="attached")

            # draw a box with the mouse
            page.click("#draw-btn")
            canvas = page.locator("#map canvas").bounding_box()
            p0 = page.evaluate(f"window.terrastill.map.project([{AOI[0]}, {AOI[3]}])")
            p1 = page.evaluate(f"window.terrastill.map.project([{AOI[2]}, {AOI[1]}])")
            page.mouse.move(canvas["x"] + p0["x"], canvas["y"] + p0["y"])
            page.mouse.down()
            page.mouse.move(canvas["x"] + p1["x"], canvas["y"] + p1["y"], steps=8)
            page.mouse.up()
            assert page.locator("#box-list li").count() == 1
            boxes = page.evaluate("window.terrastill.state.boxes")
            assert np.allclose(boxes[0], AOI, atol=2e-3), boxes

            # edit: drag the north-east corner east, then back; grab the corner where it was
            # actually drawn (a few pixels off the AOI's) once the map has stopped moving
            page.wait_for_function("() => !window.terrastill.map.isMoving()")
            ne = page.evaluate(
                f"window.terrastill.map.project([{boxes[0][2]}, {boxes[0][3]}])")
            for dx in (40, -40):
                page.mouse.move(canvas["x"] + ne["x"], canvas["y"] + ne["y"])
                page.mouse.down()
                page.mouse.move(canvas["x"] + ne["x"] + dx, canvas["y"] + ne["y"], steps=5)
                page.mouse.up()
                ne = {"x": ne["x"] + dx, "y": ne["y"]}
                edited = page.evaluate("window.terrastill.state.boxes")
                assert len(edited) == 1
                assert (edited[0][2] > AOI[2] + 1e-3) == (dx > 0), edited
            assert np.allclose(edited[0], AOI, atol=2e-3), edited

            # a typed box too large for the server: its message is shown plainly
            page.fill("#bbox-input", "0, 0, 5, 5")
            page.click("#bbox-form button")
            assert page.locator("#box-list li").count() == 2
            page.fill("#date-input", "2024-06-01")
            expect_422[0] = True
            page.click("#submit-btn")
            page.wait_for_selector("#banner:not([hidden])")
            assert "larger than this server's limit" in page.inner_text("#banner-text")
            expect_422[0] = False
            page.click("#box-list li:nth-child(2) button")
            assert page.locator("#box-list li").count() == 1
            page.click("#banner-close")
            # back over the AOI (adding the typed box zoomed out to it)
            page.evaluate(f"window.terrastill.map.jumpTo({{center: [{cx}, {cy}], zoom: 12}})")
            assert np.allclose(page.evaluate("window.terrastill.state.boxes"), [AOI], atol=2e-3)

            # pick model and date, submit
            page.select_option("#model-select", "student")
            assert "segmentation" in page.inner_text("#model-info")
            page.fill("#date-input", "2024-06-01")
            page.click("#submit-btn")
            page.wait_for_selector("#job-panel:not([hidden])")
            page.wait_for_selector("#job-summary .status.done", timeout=30_000)
            assert page.locator(".stage.done").count() == 3

            # overlay: legend, full opacity, no true colour, tiles loaded
            assert page.inner_text("#legend").splitlines() == [
                "dry", "flooded", "no data: cloud/missing"]
            # the stand-in predicts every pixel of the AOI; one COG per layer, one link each
            assert page.inner_text("#job-valid") == "100 % of the area predicted."
            assert page.locator("#download-list a").all_inner_texts() == [
                "classes", "true colour"]
            page.locator("#opacity").fill("100")
            page.uncheck("#show-truecolor")
            page.wait_for_function(
                "() => { const m = window.terrastill.map; return m.getLayer('job-classes') "
                "&& m.isSourceLoaded('job-classes') && m.areTilesLoaded(); }"
            )
            page.wait_for_timeout(500)
            shot = tmp_path / "web-map.png"
            page.screenshot(path=str(shot))
            img = np.array(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
            map_part = img[:, : 1280 - 360]
            for color in CLASS_COLORS:
                assert _color_share(map_part, hex_rgb(color)) > 0.02, color

            page.check("#show-truecolor")
            page.locator("#opacity").fill("60")
            page.wait_for_timeout(300)
            page.screenshot(path=str(tmp_path / "web-map-truecolor.png"))
            assert tile_responses and all(s == 200 for s, _ in tile_responses)
            assert all(t == "image/png" for _, t in tile_responses)
            assert page.locator("#job-list li").count() == 1
        finally:
            browser.close()
    assert not errors, errors

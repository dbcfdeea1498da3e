"""The Search panel in a real browser: click an exemplar, shift-click a negative, see the top-k
outlines and the heatmap, change k, and export; no JS or console error on the way."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from app_support import PredictRequest, fake_card, fake_predict, make_models, running_server
from terrastill.app.main import create_app
from terrastill.app.settings import Settings
from terrastill.embeddings.index import build_index
from test_browser import ARGS, BROWSER_MARKS, CHROMIUM
from test_search import make_table

pytestmark = BROWSER_MARKS
EXEMPLAR = (11.955, 45.305)  # patch p5_5 of the grid below, cluster c0
NEGATIVE = (11.995, 45.285)  # patch p9_8, cluster c2 (both in the view at zoom 13)


@pytest.fixture()
def server(tmp_path):
    indexes = tmp_path / "indexes"
    table = make_table(tmp_path / "t.parquet", y0=45.25)
    # plain sign bits: on these 32-dim synthetic clusters they rank all 20 cluster-c0 patches
    # of the view first without re-ranking, which the flow below checks (the default
    # rot-binary code is served by test_search_api)
    build_index([table], indexes / "demo", code="binary", precision=5)
    settings = Settings(models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data",
                        indexes_dir=indexes)
    app = create_app(settings, predict_fn=fake_predict, request_cls=PredictRequest,
                     read_card=fake_card)
    with running_server(app) as url:
        yield url


def test_click_exemplar_and_see_results(server, tmp_path):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800},
                                    accept_downloads=True)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}")
                    if m.type == "error" else None)
            heat: list[int] = []
            page.on("response", lambda r: heat.append(r.status)
                    if "/api/search/" in r.url and "/tiles/" in r.url else None)
            page.goto(f"{server}/#13/{EXEMPLAR[1]}/{EXEMPLAR[0] + 0.02}")
            page.wait_for_function("() => window.terrastill && window.terrastill.map.loaded()")
            page.wait_for_selector("#search-panel:not([hidden])")
            page.wait_for_selector("#search-index option[value='demo']", state="attached")
            assert "600 patches" in page.inner_text("#search-index-info")

            canvas = page.locator("#map canvas").bounding_box()

            def click(lon: float, lat: float, shift: bool = False) -> None:
                p = page.evaluate(f"window.terrastill.map.project([{lon}, {lat}])")
                assert 0 < p["x"] < canvas["width"] and 0 < p["y"] < canvas["height"], p
                if shift:
                    page.keyboard.down("Shift")
                page.mouse.click(canvas["x"] + p["x"], canvas["y"] + p["y"])
                if shift:
                    page.keyboard.up("Shift")

            page.click("#search-pick")
            page.fill("#search-k", "20")
            click(*EXEMPLAR)
            page.wait_for_function(
                "() => window.terrastill.search.result && "
                "window.terrastill.search.result.results.features.length === 20")
            res = page.evaluate("window.terrastill.search.result")
            first = res["results"]["features"][0]["properties"]
            assert first["id"] == "p5_5" and first["distance"] == 0
            assert all(f["properties"]["label"] == "c0" for f in res["results"]["features"])
            assert page.locator("#search-results li").count() == 10
            assert page.inner_text("#search-results li:first-child").startswith("p5_5")
            assert "20 results of" in page.inner_text("#search-summary")
            # the outlines are on the map, and the heatmap tiles came back
            page.wait_for_function("() => !window.terrastill.map.isMoving()")
            for _ in range(100):  # the heatmap's tiles arrive
                if heat:
                    break
                page.wait_for_timeout(100)
            page.wait_for_timeout(500)
            n = page.evaluate("window.terrastill.map.querySourceFeatures('search-results')"
                              ".length")
            assert n >= 20
            assert heat and all(s == 200 for s in heat), heat
            shot = np.asarray(Image.open(io.BytesIO(page.locator("#map").screenshot())))
            yellow = (shot[..., 0] > 200) & (shot[..., 1] > 180) & (shot[..., 2] < 140)
            assert yellow.mean() > 0.005  # outlines and hot heatmap patches

            # a negative exemplar (shift-click) and a larger k
            click(*NEGATIVE, shift=True)
            page.wait_for_function("() => window.terrastill.search.negatives.length === 1 && "
                                   "window.terrastill.search.result && "
                                   "window.terrastill.search.result.results.features.length "
                                   "=== 20 && !document.querySelector('#search-summary')"
                                   ".textContent.startsWith('Searching')")
            assert page.locator("#search-exemplars li").count() == 2
            page.fill("#search-k", "40")
            page.dispatch_event("#search-k", "change")
            page.wait_for_function("() => window.terrastill.search.result.results.features"
                                   ".length === 40")

            # export as GeoJSON
            with page.expect_download() as dl:
                page.click("#search-geojson")
            path = tmp_path / "export.geojson"
            dl.value.save_as(path)
            fc = json.loads(path.read_text())
            assert len(fc["features"]) == 40
            assert fc["features"][0]["properties"]["rank"] == 1
        finally:
            browser.close()
    assert not errors, errors

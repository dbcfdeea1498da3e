"""The web map's first run in a real browser: it opens on the catalogue's imagery and coverage.

A real tiny world's catalogue (``small_world``) is served; the map must show that imagery over a
stand-in basemap, default the date to a date with imagery, refuse a box outside the coverage
before any job, run a first job on the default date and explain the no-data part of its result;
and it must keep working against a server without the catalogue endpoints (an older one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

from app_support import (
    CLASS_COLORS,
    PredictRequest,
    PredictResult,
    fake_card,
    fake_predict,
    hex_rgb,
    make_models,
    running_server,
)
from terrastill.app.main import create_app
from terrastill.app.settings import Settings
from test_browser import ARGS, BROWSER_MARKS, CHROMIUM

pytestmark = BROWSER_MARKS
MAP_WIDTH = 1280 - 360  # the panel takes the right 360 px
BASEMAP_RGB = (200, 0, 200)  # the stand-in basemap: every tile plain magenta


def _cloudy_two_part_predict(request: Any, progress: Any = None, cancel: Any = None) -> Any:
    """The stand-in predict, then: the northern half is no data (cloud), and the classes come
    as two parts (west and east halves), as a job across two UTM zones would."""
    res = fake_predict(request, progress, cancel)
    with rasterio.open(res.classes[0]) as src:
        data, profile = src.read(), src.profile
    data[:, : data.shape[1] // 2] = profile["nodata"]
    half = data.shape[2] // 2
    parts = []
    for i, (lo, hi) in enumerate(((0, half), (half, data.shape[2]))):
        t = profile["transform"]
        path = Path(request.out_dir) / f"classes-{i}.tif"
        part = {**profile, "driver": "GTiff", "width": hi - lo,
                "transform": t @ Affine.translation(lo, 0)}
        with rasterio.open(path, "w", **part) as dst:
            dst.write(data[:, :, lo:hi])
        parts.append(path)
    res.classes[0].unlink()
    return PredictResult(classes=parts, truecolor=res.truecolor, sidecar=res.sidecar,
                         timings=res.timings)


@contextlib.contextmanager
def basemap_server() -> Iterator[str]:
    """A stand-in for an external XYZ basemap on another origin: plain magenta PNG tiles."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    buf = io.BytesIO()
    Image.new("RGB", (256, 256), BASEMAP_RGB).save(buf, format="PNG")
    png = buf.getvalue()

    async def tile(_request: Any) -> Response:
        # MapLibre fetches tiles: a real basemap allows any origin, and so does this one
        return Response(png, media_type="image/png",
                        headers={"Access-Control-Allow-Origin": "*"})

    with running_server(Starlette(routes=[Route("/{z}/{x}/{y}.png", tile)])) as url:
        yield url


def _settings(tmp_path: Path, catalog: Any, **kw: Any) -> Settings:
    return Settings(models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data",
                    catalog=str(catalog), **kw)


class Page:
    """A Chromium page on the web map that records errors, API requests and tile answers."""

    def __init__(self, browser: Any, url: str, allowed: tuple[str, ...] = ()) -> None:
        self.errors: list[str] = []
        self.allowed = list(allowed)  # console errors expected (browser's own HTTP lines)
        self.posts: list[str] = []
        self.tiles: dict[str, list[int]] = {"imagery": [], "basemap": []}
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", self._console)
        self.page.on("request", lambda r: self.posts.append(r.post_data or "")
                     if r.method == "POST" and "/api/jobs" in r.url else None)
        self.page.on("response", self._response)
        self.url = url

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not any(a in msg.text for a in self.allowed):
            self.errors.append(f"console.error: {msg.text}")

    def _response(self, r: Any) -> None:
        if "/api/imagery/tiles/" in r.url:
            self.tiles["imagery"].append(r.status)
        elif r.url.endswith(".png") and "/api/" not in r.url:
            self.tiles["basemap"].append(r.status)

    def open(self, hash_: str = "") -> Any:
        self.page.goto(f"{self.url}/{hash_}")
        self.page.wait_for_function("() => window.terrastill && window.terrastill.map.loaded()")
        self.page.wait_for_selector("#model-select option[value='student']", state="attached")
        return self.page

    def settled(self) -> None:
        self.page.wait_for_function(
            "() => { const m = window.terrastill.map; return !m.isMoving() && m.areTilesLoaded() "
            "&& Object.keys(m.getStyle().sources).every((id) => m.isSourceLoaded(id)); }")
        self.page.wait_for_timeout(400)  # fade-in of the last tiles

    def map_pixels(self, path: Path) -> np.ndarray:
        self.page.screenshot(path=str(path))
        img = np.array(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
        return img[:, :MAP_WIDTH]

    def extent_crop(self, img: np.ndarray, extent: list[float]) -> np.ndarray:
        """The screenshot's pixels inside the extent (a few pixels in from its outline)."""
        p0 = self.page.evaluate(f"window.terrastill.map.project([{extent[0]}, {extent[3]}])")
        p1 = self.page.evaluate(f"window.terrastill.map.project([{extent[2]}, {extent[1]}])")
        x0, y0 = int(p0["x"]) + 6, int(p0["y"]) + 6
        x1, y1 = int(p1["x"]) - 6, int(p1["y"]) - 6
        assert x1 - x0 > 50 and y1 - y0 > 20, (p0, p1)
        return img[y0:y1, x0:x1]

    def drag(self, a: list[float], b: list[float]) -> None:
        canvas = self.page.locator("#map canvas").bounding_box()
        pa = self.page.evaluate(f"window.terrastill.map.project({a})")
        pb = self.page.evaluate(f"window.terrastill.map.project({b})")
        self.page.mouse.move(canvas["x"] + pa["x"], canvas["y"] + pa["y"])
        self.page.mouse.down()
        self.page.mouse.move(canvas["x"] + pb["x"], canvas["y"] + pb["y"], steps=6)
        self.page.mouse.up()


def _share_like(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> float:
    return float((np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) <= tol).mean())


def test_first_run_on_the_catalogue(small_world, tmp_path):
    from playwright.sync_api import sync_playwright

    with basemap_server() as basemap:
        settings = _settings(tmp_path, small_world["catalog"],
                             basemap=f"{basemap}/{{z}}/{{x}}/{{y}}.png")
        app = create_app(settings, predict_fn=_cloudy_two_part_predict,
                         request_cls=PredictRequest, read_card=fake_card)
        with running_server(app) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
            try:
                _first_run(Page(browser, url), tmp_path)
            finally:
                browser.close()


def _first_run(p: Page, tmp_path: Path) -> None:
    page = p.open()
    catalog = page.request.get(f"{p.url}/api/catalog").json()
    extent, dates = catalog["extent"], catalog["dates"]
    assert len(dates) > 3 and extent

    # the date defaults to a recent, mostly clear date, and the panel says what there is
    default = catalog["suggested"]
    assert default in dates and page.input_value("#date-input") == default
    info = page.inner_text("#catalog-info")
    assert dates[0] in info and dates[-1] in info and f"{len(dates)} dates" in info
    assert page.locator("#imagery-dates option").count() == len(dates)
    assert f"Imagery on {default}" in page.inner_text("#date-hint")

    # it opens over the coverage: outline drawn, imagery of that date over the basemap
    page.wait_for_function("() => window.terrastill.state.imagery !== null")
    p.settled()
    assert page.evaluate(
        "window.terrastill.map.queryRenderedFeatures({layers: ['home']}).length") > 0
    assert page.inner_text("#imagery-date") == f"of {default}"
    img = p.map_pixels(tmp_path / "first-run.png")
    inside = p.extent_crop(img, extent)
    assert _share_like(img, BASEMAP_RGB) > 0.3  # around the coverage: the basemap
    assert _share_like(inside, BASEMAP_RGB) < 0.05  # inside it: the imagery, on top
    assert inside.std() > 3  # real scenes, not a flat fill
    assert p.tiles["imagery"] and set(p.tiles["imagery"]) == {200}
    assert p.tiles["basemap"] and set(p.tiles["basemap"]) == {200}
    page.uncheck("#show-imagery")
    page.wait_for_timeout(300)
    assert _share_like(p.extent_crop(p.map_pixels(tmp_path / "no-imagery.png"), extent),
                       BASEMAP_RGB) > 0.9
    page.check("#show-imagery")

    # a box drawn (or typed) outside the coverage is refused, and nothing is submitted
    w = extent[2] - extent[0]
    zoom = page.evaluate("window.terrastill.map.getZoom()")
    page.evaluate(f"window.terrastill.map.jumpTo({{zoom: {zoom - 2}}})")
    page.click("#draw-btn")
    p.drag([extent[2] + 0.3 * w, extent[3]], [extent[2] + 0.8 * w, extent[1]])
    assert "outside the catalogue's coverage" in page.inner_text("#banner-text")
    assert page.locator("#box-list li").count() == 0
    page.screenshot(path=str(tmp_path / "refused.png"))
    page.click("#banner-close")
    page.fill("#bbox-input", "0, 0, 0.01, 0.01")
    page.click("#bbox-form button")
    assert "outside the catalogue's coverage" in page.inner_text("#banner-text")
    assert page.locator("#box-list li").count() == 0
    assert p.posts == []

    # ... and the server says the same when the page does not know the coverage
    page.evaluate("window.terrastill.state.home = null")
    page.fill("#bbox-input", "0, 0, 0.01, 0.01")
    page.click("#bbox-form button")
    p.allowed.append("status of 422")
    page.click("#submit-btn")
    page.wait_for_function(
        "() => document.getElementById('banner-text').textContent.startsWith('aois:')")
    assert "outside the catalogue's coverage" in page.inner_text("#banner-text")
    p.allowed.remove("status of 422")
    page.evaluate(f"window.terrastill.state.home = {extent}")
    page.click("#box-list li button")
    page.click("#banner-close")
    p.posts.clear()

    # a first job on the default date, inside the coverage: no data explained, parts offered
    cx = (extent[0] + extent[2]) / 2
    cy = (extent[1] + extent[3]) / 2
    aoi = [cx - 0.3 * w, cy - 0.006, cx + 0.3 * w, cy + 0.006]
    page.fill("#bbox-input", ", ".join(f"{v:.5f}" for v in aoi))
    page.click("#bbox-form button")
    assert page.locator("#box-list li").count() == 1
    page.click("#submit-btn")
    page.wait_for_selector("#job-summary .status.done", timeout=30_000)
    assert len(p.posts) == 1 and f'"date":"{default}"' in p.posts[0]
    job = page.evaluate("window.terrastill.state.jobs[0]")
    share = job["valid_share"]
    assert 0.35 < share < 0.65, share
    valid = page.inner_text("#job-valid")
    assert valid == (f"{round(share * 100)} % of the area predicted; the rest had no usable "
                     "imagery (cloud or missing) and is left as no data."), valid
    assert page.inner_text("#legend").splitlines() == ["dry", "flooded", "no data: cloud/missing"]
    links = page.locator("#download-list a")
    assert links.all_inner_texts() == ["classes · part 1 of 2", "classes · part 2 of 2",
                                       "true colour"]
    assert links.nth(1).get_attribute("href").endswith("layer=classes&part=1")
    with page.expect_download() as dl:
        links.nth(1).click()
    assert dl.value.suggested_filename.endswith("-classes-1.tif")
    with rasterio.open(dl.value.path()) as src:
        assert src.count == 1 and src.nodata == 255

    # the result on the map: classes in the south half, the imagery through the cloudy north
    page.locator("#opacity").fill("100")
    page.uncheck("#show-truecolor")
    p.settled()
    img = p.map_pixels(tmp_path / "first-job.png")
    for color in CLASS_COLORS:
        assert _share_like(img, hex_rgb(color)) > 0.02, color
    assert page.locator("#job-list li").count() == 1

    # another date: the hint names the nearest imagery and the layer follows it
    missing = next(d for d in _days_between(dates[0], dates[-1]) if d not in dates)
    page.fill("#date-input", missing)
    page.wait_for_function(f"() => (window.terrastill.state.imagery || {{}}).date "
                           f"&& window.terrastill.state.imagery.date !== '{default}'")
    shown = page.evaluate("window.terrastill.state.imagery.date")
    assert shown in dates and shown != missing
    assert f"No scene on {missing}; the nearest imagery is" in page.inner_text("#date-hint")
    assert page.inner_text("#imagery-date") == f"of {shown}"
    assert f"Showing {shown}, the imagery nearest {missing}" in page.inner_text("#imagery-note")
    page.click("#date-next")
    assert page.input_value("#date-input") == min(d for d in dates if d > missing)
    assert not p.errors, p.errors


def _days_between(first: str, last: str) -> list[str]:
    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def test_older_server_without_catalogue_endpoints(small_world, tmp_path):
    """No /api/catalog or imagery TileJSON (404): the map works as before, saying less."""
    from playwright.sync_api import sync_playwright

    app = create_app(_settings(tmp_path, small_world["catalog"]), predict_fn=fake_predict,
                     request_cls=PredictRequest, read_card=fake_card)
    not_found = {"status": 404, "content_type": "application/json",
                 "body": '{"detail": "Not Found"}'}
    with running_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            # an older server: no catalogue description at all
            p = Page(browser, url, allowed=("status of 404",))
            p.page.route("**/api/catalog", lambda route: route.fulfill(**not_found))
            page = p.open()
            page.wait_for_function(
                "() => document.getElementById('catalog-info').textContent.includes('does not')")
            today = page.evaluate("new Date().toISOString().slice(0, 10)")
            assert page.input_value("#date-input") == today
            assert page.evaluate("window.terrastill.state.imagery") is None
            for hidden in ("#date-hint", "#imagery-toggle", "#basemap-toggle"):
                assert page.is_hidden(hidden), hidden
            home = page.request.get(f"{url}/api/health").json()["home"]
            assert page.evaluate(  # the outline still comes from /api/health
                "window.terrastill.map.queryRenderedFeatures({layers: ['home']}).length") > 0
            assert home
            lon, lat = (home[0] + home[2]) / 2, (home[1] + home[3]) / 2
            page.fill("#bbox-input", f"{lon - 0.005}, {lat - 0.003}, {lon + 0.005}, {lat + 0.003}")
            page.click("#bbox-form button")
            page.fill("#date-input", "2024-06-21")
            page.click("#submit-btn")
            page.wait_for_selector("#job-summary .status.done", timeout=30_000)
            assert "no data: cloud/missing" in page.inner_text("#legend")
            page.screenshot(path=str(tmp_path / "older-server.png"))
            assert p.tiles["imagery"] == []
            assert not p.errors, p.errors
            p.page.close()

            # the catalogue is described, but its imagery TileJSON is missing
            p = Page(browser, url, allowed=("status of 404",))
            p.page.route(re.compile(r".*/api/imagery/tilejson\.json.*"),
                         lambda route: route.fulfill(**not_found))
            page = p.open()
            page.wait_for_selector("#imagery-note:not([hidden])")
            assert "No imagery to show for" in page.inner_text("#imagery-note")
            assert page.evaluate("window.terrastill.state.imagery") is None
            assert page.input_value("#date-input") in page.request.get(
                f"{url}/api/catalog").json()["dates"]
            assert page.locator("#job-list li").count() == 1  # the first page's job
            assert not p.errors, p.errors
        finally:
            browser.close()

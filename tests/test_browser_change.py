"""The web map's Change mode in a real browser: load a change product, click change and
no-change pixels, Train in the browser, see the heatmap over the changed block, save the model
and use it with ``terrastill change-map``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pyproj import Transformer
from typer.testing import CliRunner

from app_support import fake_app, running_server
from terrastill.cli import app
from test_browser import ARGS, BROWSER_MARKS, CHROMIUM
from test_change import CHANGED, ORIGIN, RES, write_emb

pytestmark = BROWSER_MARKS
MAP_WIDTH = 1280 - 360  # the panel takes the right 360 px
TO_LL = Transformer.from_crs(32633, 4326, always_xy=True)


def lonlat(row: float, col: float) -> list[float]:
    return list(TO_LL.transform(ORIGIN[0] + col * RES, ORIGIN[1] - row * RES))


def make_product(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 60, 80))
    b = a + 0.1 * rng.standard_normal(a.shape)
    b[:, CHANGED[0], CHANGED[1]] += 1.5 * rng.standard_normal((16, 1, 1))
    write_emb(tmp_path / "a.tif", a)
    write_emb(tmp_path / "b.tif", b, "2024-07-01")
    out = tmp_path / "changes" / "demo"
    res = CliRunner().invoke(app, ["change", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
                                   "--out", str(out), "--pca", "8"])
    assert res.exit_code == 0, res.output
    return out


def test_click_train_heatmap_and_save(tmp_path):
    from playwright.sync_api import sync_playwright

    product = make_product(tmp_path)
    pid = json.loads((product / "change.json").read_text())["id"]
    errors: list[str] = []
    with running_server(fake_app(tmp_path, changes_dir=product.parent)) as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(90_000)  # a shared, loaded CI machine
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            # the browser's own "Failed to load resource" lines are checked through the
            # responses instead (another panel asks /api/indexes, a 404 without --indexes)
            page.on("console", lambda m: errors.append(f"console: {m.text}")
                    if m.type == "error" and "Failed to load resource" not in m.text else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/api/indexes") else None)
            page.goto(f"{url}/")
            page.wait_for_selector("#change-panel:not([hidden])")
            assert page.locator(f"#change-product option[value='{pid}']").count() == 1
            settled(page)
            canvas = page.locator("#map canvas").bounding_box()

            def click(row: float, col: float) -> None:
                p = page.evaluate(f"window.terrastill.map.project({lonlat(row, col)})")
                page.mouse.click(canvas["x"] + p["x"], canvas["y"] + p["y"])

            page.click("#change-pick-1")
            for r, c in ((24, 34), (28, 44), (35, 36), (37, 46), (30, 40)):
                click(r + 0.5, c + 0.5)
            page.click("#change-pick-0")
            for r, c in ((8, 10), (50, 20), (50, 70), (10, 65), (45, 40)):
                click(r + 0.5, c + 0.5)
            page.wait_for_function("() => window.terrastill.change.clicks.length === 10")
            assert "5 change, 5 no-change" in page.inner_text("#change-counts")
            page.uncheck("#change-pca")
            page.click("#change-train")
            page.wait_for_function("() => window.terrastill.change.model !== null "
                                   "&& window.terrastill.change.rendered > 0")
            model = page.evaluate("window.terrastill.change.model")
            assert model["train_accuracy"] == 1.0 and len(model["code_weights"]) == 8
            settled(page)
            page.screenshot(path=str(tmp_path / "heat.png"))
            img = np.array(Image.open(io.BytesIO((tmp_path / "heat.png").read_bytes()))
                           .convert("RGB"))[:, :MAP_WIDTH].astype(int)

            def crop(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
                p0 = page.evaluate(f"window.terrastill.map.project({lonlat(r0, c0)})")
                p1 = page.evaluate(f"window.terrastill.map.project({lonlat(r1, c1)})")
                return img[int(p0["y"]) + 4:int(p1["y"]) - 4, int(p0["x"]) + 4:int(p1["x"]) - 4]

            def red(a: np.ndarray) -> float:
                return float(((a[..., 0] > 120) & (a[..., 0] > a[..., 1] + 60)).mean())

            inside = crop(CHANGED[0].start, CHANGED[0].stop, CHANGED[1].start,
                          CHANGED[1].stop)
            outside = crop(45, 58, 5, 75)
            assert inside.size and outside.size
            assert red(inside) > 0.6, red(inside)
            assert red(outside) < 0.1, red(outside)

            page.click("#change-save")
            page.wait_for_function("() => window.terrastill.change.saved !== null")
            saved = page.evaluate("window.terrastill.change.saved")
        finally:
            browser.close()
    assert not errors, errors
    path = tmp_path / "data" / "change-models" / pid / f"{saved['id']}.json"
    stored = json.loads(path.read_text())
    assert stored["labels"] == {"n": 10, "change": 5, "no_change": 5}
    res = CliRunner().invoke(app, ["change-map", str(product), str(path), "--out",
                                   str(tmp_path / "prob.tif")])
    assert res.exit_code == 0, res.output
    import rasterio

    with rasterio.open(tmp_path / "prob.tif") as src:
        p = src.read(1)
    assert np.nanmean(p[CHANGED]) > 0.6 and np.nanmean(p[45:]) < 0.4  # C = 1, ten clicks
    assert (p[CHANGED] > 0.5).mean() > 0.9
    assert (p[45:] > 0.5).mean() < 0.1


def settled(page) -> None:
    page.wait_for_function(
        "() => { const m = window.terrastill.map; return !m.isMoving() && m.areTilesLoaded() "
        "&& Object.keys(m.getStyle().sources).every((id) => m.isSourceLoaded(id)); }")
    page.wait_for_timeout(400)

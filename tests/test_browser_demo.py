"""A fresh ``terrastill demo --serve`` in a real browser: the map shows the world's imagery, the
demo's own prediction as a finished job and a date with data, and a first prediction on the
default date succeeds (real models, real prediction, no stand-ins)."""

from __future__ import annotations

from app_support import running_server
from terrastill.app.main import create_app
from terrastill.app.settings import Settings
from test_browser import ARGS, BROWSER_MARKS, CHROMIUM
from test_browser_firstrun import Page

pytestmark = BROWSER_MARKS


def test_demo_serve_first_run(quick_demo, tmp_path):
    from playwright.sync_api import sync_playwright

    from terrastill.demo import add_demo_job

    out, summary = quick_demo["out"], quick_demo["summary"]
    demo_job = add_demo_job(out, summary)  # what `demo --serve` does before serving
    settings = Settings(models_dir=out / "serve-models", data_dir=out / "serve",
                        catalog=summary["catalog"])
    with running_server(create_app(settings)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            p = Page(browser, url)
            page = p.page
            page.goto(f"{url}/")
            page.wait_for_function(
                "() => window.terrastill && window.terrastill.map.loaded()")
            page.wait_for_selector("#model-select option[value='flood-student']",
                                   state="attached")
            catalog = page.request.get(f"{url}/api/catalog").json()
            # a date with imagery by default, the world's scenes on the map
            default = page.input_value("#date-input")
            assert default == catalog["suggested"] and default in catalog["dates"]
            page.wait_for_function("() => window.terrastill.state.imagery !== null")
            p.settled()
            assert p.tiles["imagery"] and set(p.tiles["imagery"]) == {200}
            img = p.map_pixels(tmp_path / "demo-first-run.png")
            assert p.extent_crop(img, catalog["extent"]).std() > 3  # scenes, not a flat fill
            # the demo's own prediction is there, finished
            jobs = page.evaluate("window.terrastill.state.jobs")
            assert [j["id"] for j in jobs] == [demo_job] and jobs[0]["status"] == "done"
            assert "flood-student" in page.inner_text("#job-list")
            # a first prediction on the default date over the world succeeds
            e = catalog["extent"]
            cx, cy = (e[0] + e[2]) / 2, (e[1] + e[3]) / 2
            dx, dy = (e[2] - e[0]) * 0.45, (e[3] - e[1]) * 0.45
            page.select_option("#model-select", "flood-student")
            page.fill("#bbox-input", f"{cx - dx:.5f}, {cy - dy:.5f}, {cx + dx:.5f}, "
                                     f"{cy + dy:.5f}")
            page.click("#bbox-form button")
            page.click("#submit-btn")
            page.wait_for_function(
                "() => window.terrastill.state.jobs.length === 2 && ['done', 'failed']"
                ".includes(window.terrastill.state.jobs.find((j) => j.id !== "
                f"'{demo_job}').status)", timeout=120_000)
            jobs = page.request.get(f"{url}/api/jobs").json()
            job = next(j for j in jobs if j["id"] != demo_job)
            assert job["status"] == "done", job.get("error")
            page.wait_for_selector("#job-summary .status.done")
            assert job["date"] == default and job["valid_share"] > 0
            assert "% of the area predicted" in page.inner_text("#job-valid")
            assert not p.errors, p.errors
        finally:
            browser.close()

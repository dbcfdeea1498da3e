"""What the `chips` process spends besides reading: no torch import, footprints built once,
and the benchmark that compares the whole process with its read loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shapely.geometry import Point, shape

from terrastill.data.chips import items_over, items_over_each
from terrastill.data.grid import ChipGrid, to_crs, utm_epsg
from test_scripts_smoke import ROOT, load

NO_TORCH = """
import sys
from terrastill.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
heavy = sorted(m for m in ("torch", "lightning", "distributed") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


def test_chips_command_does_not_import_torch(small_world, tmp_path):
    """`terrastill chips` (without --indices) needs no deep-learning stack: importing torch
    cost the command seconds before it read anything."""
    task = small_world["tasks"]["flood"]
    args = ["chips", str(task["observations"]), "--catalog", str(small_world["catalog"]),
            "--classes", "land,water", "--num-steps", "2", "--temporal-step", "9",
            "--temporal-tolerance", "4", "--chip-size", "16", "--min-valid", "0.3",
            "--out", str(tmp_path / "ds")]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ds" / "dataset.json").exists()
    assert "HEAVY \n" in proc.stdout, proc.stdout


def test_items_over_each_equals_items_over_per_grid(small_world):
    items = json.loads(Path(small_world["catalog"]).read_text())["features"]
    items[3] = {**items[3], "geometry": None}  # an item without a footprint never matches
    grids = []
    # chips at the centres of some items' footprints (so at least those items hit) and far away
    centres = [shape(it["geometry"]).centroid for it in items[::50] if it["geometry"]]
    for lon, lat in [*((c.x, c.y) for c in centres), (0.0, 0.0)]:
        epsg = utm_epsg(lon, lat)
        p = to_crs(Point(lon, lat), 4326, epsg)
        cg = ChipGrid(epsg, 16, 30.0)
        grids.append(cg.spec(*cg.cell_of(p.x, p.y)))
    got = items_over_each(items, grids)
    assert got == [items_over(items, g) for g in grids]
    assert any(got) and got[-1] == []  # some grid is covered, the one at (0, 0) is not
    assert items_over_each([], grids) == [[] for _ in grids]


@pytest.mark.slow
def test_bench_chips_reports_whole_process_against_its_read_loop(small_world, capsys):
    """--whole-only times the real CLI and the read loop (and a baseline src in the same
    rounds) and reports the ratio of their rates."""
    mod = load("bench_chips")
    assert mod.main(["--world", str(small_world["root"]), "--whole-only", "--repeats", "1",
                     "--chip-size", "16", "--baseline-src", str(ROOT / "src")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["whole_process"]
    assert res["chips"] > 0 and res["windows"] >= res["chips"]
    for k in ("read_loop", "whole", "baseline_whole"):
        assert res[k]["median_s"] > 0 and res[k]["median_cpu_s"] > 0
    # the whole process reads the same windows and does more: its rate is the lower one
    assert 0 < res["whole_vs_read_loop"] < 1
    assert res["whole_vs_read_loop"] == pytest.approx(
        res["read_loop"]["median_s"] / res["whole"]["median_s"], abs=0.002)
    assert 0 < res["baseline_whole_vs_read_loop"] < 1


class _CountingCatalog:
    """A catalogue that counts its searches."""

    def __init__(self, inner):
        self.inner, self.searches = inner, 0
        self.location = inner.location

    def search(self, search):
        self.searches += 1
        return self.inner.search(search)

    def collection_ids(self):
        return self.inner.collection_ids()


def test_dates_share_searches_and_tasks_get_their_own_dates_items(small_world):
    """Overlapping dates share one search, yet every task gets exactly the items (and order)
    a search over its own date's window and chips gives."""
    import datetime as dt

    from terrastill.catalog import Search, open_catalog
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions, load_observations
    from terrastill.data.plan import attach_items, catalog_collections, group_observations
    from terrastill.data.temporal import TemporalOptions

    read = ReadOptions(temporal=TemporalOptions(2, 9, 4, 60))
    obs = load_observations(small_world["tasks"]["landcover"]["observations"],
                            ObservationOptions())
    tasks, _ = group_observations(obs, 16, 30.0, 1)
    cat = _CountingCatalog(open_catalog(str(small_world["catalog"])))
    cols = catalog_collections(cat.inner, read)
    attach_items(tasks, cat, cols, read)
    dates = {t.date for t in tasks}
    assert 1 <= cat.searches < len(dates)
    for day in sorted(dates):
        group = [t for t in tasks if t.date == day]
        start, end = read.temporal.search_window(day)
        found = cat.inner.search(Search(
            cols, (-180, -90, 180, 90), dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(end, dt.time.max, tzinfo=dt.UTC)))
        own = [it.to_dict(transform_hrefs=False) for it in found]
        for t in group:
            assert [it["id"] for it in t.items] == [it["id"] for it in items_over(own, t.grid)]
    assert any(t.items for t in tasks)

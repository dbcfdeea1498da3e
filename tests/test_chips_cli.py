"""``terrastill chips`` / ``split`` from the command line: bad input, resume, determinism."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from terrastill.cli import app

runner = CliRunner()
OPTS = ["--classes", "land,water", "--chip-size", "16", "--num-steps", "2", "--temporal-step",
        "9", "--temporal-tolerance", "4", "--max-cloud", "60", "--min-valid", "0.3",
        "--split-block", "1000"]


def chips_args(world: dict, out: Path, obs: str | None = None, *extra: str) -> list[str]:
    obs = obs or world["tasks"]["flood"]["observations"]
    return ["chips", str(obs), "--catalog", world["catalog"], "--out", str(out), *OPTS, *extra]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "chips"
    res = runner.invoke(app, chips_args(small_world, out))
    assert res.exit_code == 0, res.output
    return out


def write(tmp: Path, name: str, text: str | bytes) -> str:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


BAD_CASES = {
    "missing file": (lambda t, w: ["chips", str(t / "nope.csv")], "not found"),
    "empty table": (lambda t, w: ["chips", write(t, "e.csv", "lon,lat,date,label\n")],
                    "no observations"),
    "no lon column": (lambda t, w: ["chips", write(t, "c.csv", "x,lat,date,label\n1,2,2024-01-01,"
                                                   "land\n")], "missing column 'lon'"),
    "not text": (lambda t, w: ["chips", write(t, "b.csv", b"\xff\xfe\x00\x81" * 50)],
                 "cannot parse"),
    "unsupported format": (lambda t, w: ["chips", write(t, "o.xlsx", "x")],
                           "unsupported observations format"),
    "strict with bad rows": (lambda t, w: ["chips", w["bad_rows"]["flood"]["file"], "--strict"],
                             "row 27: missing or NaN coordinate"),  # line 28 of the file
    "chip size": (lambda t, w: ["chips", None, "--chip-size", "4"], "--chip-size 4"),
    "min valid": (lambda t, w: ["chips", None, "--min-valid", "1.5"], "--min-valid 1.5"),
    "label window": (lambda t, w: ["chips", None, "--label-window", "2"], "--label-window 2"),
    "num steps": (lambda t, w: ["chips", None, "--num-steps", "0"], "--num-steps must be"),
    "max cloud": (lambda t, w: ["chips", None, "--max-cloud", "150"], "--max-cloud 150"),
    "unknown source": (lambda t, w: ["chips", None, "--source", "modis"], "unknown source 'modis'"),
    "unknown band": (lambda t, w: ["chips", None, "--bands", "red,purple"], "band 'purple'"),
    "unknown mask class": (lambda t, w: ["chips", None, "--mask", "cloud,dragons"],
                           "mask class 'dragons'"),
    "catalog missing": (lambda t, w: ["chips", None, "--catalog", str(t / "none.json")],
                        "catalogue file not found"),
    "catalog not json": (lambda t, w: ["chips", None, "--catalog", write(t, "k.json", "{oops")],
                         "not a readable STAC JSON"),
    "catalog wrong source": (lambda t, w: ["chips", None, "--source", "s2"],
                             "no S2 collection"),
    "bad crs": (lambda t, w: ["chips", None, "--crs", "EPSG:99999999"],
                "is not a coordinate reference system"),
    "zero temporal step": (lambda t, w: ["chips", None, "--temporal-step", "0"],
                           "--temporal-step must be > 0"),
    "unknown config key": (lambda t, w: ["chips", None, "--config",
                                         write(t, "c.yaml", "colour: red\n")],
                           "unknown option 'colour'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, small_world, tmp_path):
    make, expected = BAD_CASES[case]
    args = make(tmp_path, small_world)
    obs = args[1] or small_world["tasks"]["flood"]["observations"]
    out = tmp_path / "out"
    base = ["chips", obs, "--catalog", small_world["catalog"], "--out", str(out), *OPTS]
    res = runner.invoke(app, base + args[2:])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert expected in res.output, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert not out.exists()


def test_out_path_that_is_a_file_is_refused(small_world, tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    res = runner.invoke(app, chips_args(small_world, out))
    assert res.exit_code == 2 and "is not a folder" in res.output
    assert out.read_text() == "x"


def test_bad_rows_are_listed_in_rejected_csv(small_world, tmp_path):
    bad = small_world["bad_rows"]["flood"]
    res = runner.invoke(app, chips_args(small_world, tmp_path / "o", bad["file"]))
    assert res.exit_code == 0, res.output
    rej = pd.read_csv(tmp_path / "o" / "rejected.csv")
    # rejected.csv counts 1-based data rows: row N is on line N + 1 of the file
    for row in bad["rows"]:
        reasons = rej.loc[rej.source_row == row["line"] - 1, "reason"].tolist()
        assert reasons, row
    reason_of = dict(zip(rej.source_row, rej.reason, strict=False))
    kinds = {r["reason"]: reason_of[r["line"] - 1] for r in bad["rows"]}
    assert "missing or NaN coordinate" in kinds["missing lon"]
    assert "out of range" in kinds["lat out of range"]
    assert "unparsable date" in kinds["unparsable date"]
    assert "unknown label" in kinds["unknown label"]


def test_same_inputs_give_byte_identical_datasets(reference, small_world, tmp_path):
    res = runner.invoke(app, chips_args(small_world, tmp_path / "again"))
    assert res.exit_code == 0, res.output
    assert digest(tmp_path / "again") == digest(reference)


def test_rerun_skips_finished_chips(reference, small_world, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    res = runner.invoke(app, chips_args(small_world, out))
    assert res.exit_code == 0 and "already done" in res.output
    assert digest(out) == digest(reference)


def test_changed_options_on_an_existing_folder_are_refused(reference, small_world, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    res = runner.invoke(app, [*chips_args(small_world, out), "--min-count", "2"])
    assert res.exit_code == 2 and "different" in res.output and "--overwrite" in res.output


def test_killed_run_resumes_to_identical_bytes(reference, small_world, tmp_path):
    """SIGKILL part-way, then resume: no half-written file, final bytes as uninterrupted."""
    out = tmp_path / "killed"
    env = {**os.environ, "TERRASTILL_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "terrastill.cli", *chips_args(small_world, out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        recs = list((out / "records").glob("*.json")) if (out / "records").exists() else []
        if len(recs) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists(), "run finished before it could be killed"
    for p in out.rglob("*.tif"):  # every image under its final name is complete and readable
        if p.name.startswith(".tmp-"):
            continue  # a write the kill interrupted: a temporary name, removed on resume
        import rasterio

        with rasterio.open(p) as src:
            src.read()
    res = runner.invoke(app, chips_args(small_world, out))
    assert res.exit_code == 0, res.output
    assert not list(out.rglob(".tmp-*"))
    assert digest(out) == digest(reference)


def test_split_uses_spatial_blocks(reference, tmp_path):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    res = runner.invoke(app, ["split", str(out), "--block-size", "2000", "--ratios",
                              "0.6,0.2,0.2", "--seed", "4"])
    assert res.exit_code == 0, res.output
    idx = gpd.read_parquet(out / "index.parquet")
    blocks = {}
    for rec in idx.itertuples():
        key = (rec.epsg, int(rec.transform[2] // 2000), int(rec.transform[5] // 2000))
        blocks.setdefault(key, set()).add(rec.split)
    assert all(len(s) == 1 for s in blocks.values())  # a block never spans two splits
    assert set(idx.split) == {"train", "val", "test"}
    bad = runner.invoke(app, ["split", str(out), "--ratios", "0.5,0.2"])
    assert bad.exit_code == 2 and "--ratios" in bad.output


@pytest.mark.slow
def test_two_dask_workers_give_the_same_bytes(reference, small_world, tmp_path):
    res = runner.invoke(app, chips_args(small_world, tmp_path / "dask", None, "--workers", "2"))
    assert res.exit_code == 0, res.output
    assert digest(tmp_path / "dask") == digest(reference)


def test_label_raster_with_a_date_makes_dense_label_chips(small_world, tmp_path):
    truth = small_world["tasks"]["flood"]["truth"]["32633"]
    res = runner.invoke(app, ["chips", truth, "--date", small_world["tasks"]["flood"]["date"],
                              "--catalog", small_world["catalog"], "--out", str(tmp_path / "r"),
                              *OPTS])
    assert res.exit_code == 0, res.output
    idx = gpd.read_parquet(tmp_path / "r" / "index.parquet")
    assert len(idx) > 3
    import rasterio

    from terrastill.data.grid import GridSpec
    from terrastill.data.read import read_asset

    for cid in idx["id"][:3]:
        with rasterio.open(tmp_path / "r" / "labels" / f"{cid}.tif") as lab:
            labels = lab.read(1)
            grid = GridSpec(lab.crs.to_epsg(), lab.transform, lab.width, lab.height)
        want = read_asset(truth, grid, fill=-1)
        assert (labels >= 0).mean() > 0.5  # dense, not points
        np.testing.assert_array_equal(labels[labels >= 0], want[labels >= 0])
    missing = runner.invoke(app, ["chips", truth, "--catalog", small_world["catalog"], "--out",
                                  str(tmp_path / "x"), *OPTS])
    assert missing.exit_code == 2 and "needs --date" in missing.output


def test_polygons_in_geojson_are_rasterized_with_their_label(small_world, tmp_path):
    import json as _json

    from shapely.geometry import box, mapping

    b = small_world["tiles"][0]["lonlat_bounds"]
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    d = 0.002
    feats = [{"type": "Feature", "geometry": mapping(box(cx - d, cy - d, cx + d, cy + d)),
              "properties": {"label": "land", "date": "2024-06-26"}}]
    path = tmp_path / "polys.geojson"
    path.write_text(_json.dumps({"type": "FeatureCollection", "features": feats}))
    res = runner.invoke(app, ["chips", str(path), "--catalog", small_world["catalog"],
                              "--out", str(tmp_path / "p"), *OPTS])
    assert res.exit_code == 0, res.output
    idx = gpd.read_parquet(tmp_path / "p" / "index.parquet")
    assert len(idx) >= 1
    import rasterio

    labelled = 0
    for cid in idx["id"]:
        with rasterio.open(tmp_path / "p" / "labels" / f"{cid}.tif") as lab:
            arr = lab.read(1)
        assert set(np.unique(arr)) <= {-1, 0}
        labelled += int((arr == 0).sum())
    # a ~320 m square at 30 m covers on the order of 100 pixels
    assert 60 < labelled < 200


def test_geoparquet_points_give_the_same_chips_as_csv(reference, small_world, tmp_path):
    from shapely.geometry import Point

    df = pd.read_csv(small_world["tasks"]["flood"]["observations"])
    gdf = gpd.GeoDataFrame(df[["date", "label"]],
                           geometry=[Point(x, y) for x, y in zip(df.lon, df.lat, strict=True)],
                           crs="EPSG:4326")
    path = tmp_path / "obs.parquet"
    gdf.to_parquet(path)
    res = runner.invoke(app, chips_args(small_world, tmp_path / "gp", str(path)))
    assert res.exit_code == 0, res.output
    for sub in ("chips", "labels"):
        got = digest(tmp_path / "gp" / sub)
        assert got and got == digest(reference / sub)

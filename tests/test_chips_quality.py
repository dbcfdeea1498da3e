"""Chips count only what training can use; observations are read as a careful user expects
(ISO dates, original columns kept, one precedence, duplicates and conflicts, --strict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from shapely.geometry import Point, box
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.data.grid import ChipGrid, to_crs, utm_epsg
from terrastill.data.labels import burn_labels
from terrastill.data.observations import load_observations, parse_date

runner = CliRunner()
OPTS = ["--classes", "land,water", "--chip-size", "16", "--num-steps", "2", "--temporal-step",
        "9", "--temporal-tolerance", "4", "--split-block", "1000"]


def run_chips(world: dict, obs: str | Path, out: Path, *extra: str):
    return runner.invoke(app, ["chips", str(obs), "--catalog", world["catalog"], "--out",
                               str(out), *OPTS, *extra])


def flood_rows(world: dict) -> pd.DataFrame:
    return pd.read_csv(world["tasks"]["flood"]["observations"], dtype=str)


def test_labels_without_data_at_every_step_are_ignored_and_counts_match(small_world, tmp_path):
    # a permissive cloud limit lets chips through whose labelled pixels are cloudy at a step
    out = tmp_path / "o"
    res = run_chips(small_world, small_world["tasks"]["flood"]["observations"], out,
                    "--max-cloud", "100", "--min-valid", "0", "--label-window", "3")
    assert res.exit_code == 0, res.output
    index = pd.read_parquet(out / "index.parquet")
    total = np.zeros(2, np.int64)
    for cid in index["id"]:
        with rasterio.open(out / "chips" / f"{cid}.tif") as src:
            valid = np.isfinite(src.read()).all(axis=0)
        with rasterio.open(out / "labels" / f"{cid}.tif") as src:
            labels = src.read(1)
        assert (labels >= 0).any(), cid
        assert not ((labels >= 0) & ~valid).any(), f"{cid}: a label on a pixel without data"
        total += np.bincount(labels[labels >= 0], minlength=2)
    counts = json.loads((out / "dataset.json").read_text())["counts"]["label_pixels"]
    assert [counts["land"], counts["water"]] == total.tolist()
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected.reason.str.contains("no labelled pixel has valid data at every step").any()


@pytest.mark.parametrize("text", ["03/08/2024", "3 Aug 2024", "20240803", "2024-13-01", "08-03"])
def test_only_iso_dates_are_read(text):
    assert parse_date(text) is None


def test_iso_dates_and_explicit_formats():
    assert str(parse_date("2024-08-03")) == "2024-08-03"
    assert str(parse_date("2024-08-03T23:30:00-02:00")) == "2024-08-04"  # UTC date
    assert str(parse_date("03/08/2024", "%d/%m/%Y")) == "2024-08-03"
    assert parse_date("2024-08-03", "%d/%m/%Y") is None


def test_non_iso_dates_are_rejected_and_date_format_reads_them(small_world, tmp_path):
    rows = flood_rows(small_world).head(6).copy()
    day = pd.to_datetime(rows["date"])
    rows["date"] = day.dt.strftime("%d/%m/%Y")
    path = tmp_path / "dmy.csv"
    rows.to_csv(path, index=False)
    res = run_chips(small_world, path, tmp_path / "o1")
    assert res.exit_code == 2 and "all 6 rows rejected" in res.output, res.output
    rej = pd.read_csv(tmp_path / "o1" / "rejected.csv", dtype=str)
    assert rej.reason.str.contains("unparsable date").all()
    assert rej.reason.str.contains("--date-format").all()
    res = run_chips(small_world, path, tmp_path / "o2", "--date-format", "%d/%m/%Y",
                    "--max-cloud", "100", "--min-valid", "0")
    assert res.exit_code == 0, res.output
    index = pd.read_parquet(tmp_path / "o2" / "index.parquet")
    assert set(index["date"]) <= set(day.dt.strftime("%Y-%m-%d"))


def test_rejected_csv_keeps_every_original_column(small_world, tmp_path):
    rows = flood_rows(small_world).head(5)
    table = pd.DataFrame({"Unnamed: 0": range(5), "x": rows["lon"], "y": rows["lat"],
                          "date": rows["date"], "label": rows["label"], "note": list("abcde")})
    table.loc[1, "y"] = "north"
    table.loc[3, "label"] = "lava"
    path = tmp_path / "xy.csv"
    table.to_csv(path, index=False)
    res = run_chips(small_world, path, tmp_path / "o", "--lon-col", "x", "--lat-col", "y")
    assert res.exit_code == 0, res.output
    rej = pd.read_csv(tmp_path / "o" / "rejected.csv", dtype=str, keep_default_na=False)
    assert list(rej.columns[:3]) == ["source_row", "chip_id", "reason"]
    assert list(rej.columns[3:]) == list(table.columns)
    bad = rej.set_index("source_row")
    assert bad.loc["2", "y"] == "north" and bad.loc["2", "x"] == table.loc[1, "x"]
    assert bad.loc["4", "label"] == "lava" and bad.loc["4", "note"] == "d"


def test_instageo_csv_outside_the_world_is_all_rejected_with_its_columns(small_world,
                                                                        real_data, tmp_path):
    src = real_data / "instageo" / "test_breeding_data.csv"
    out = tmp_path / "o"
    res = runner.invoke(app, ["chips", str(src), "--catalog", small_world["catalog"], "--out",
                              str(out), "--lon-col", "x", "--lat-col", "y", "--num-steps", "1",
                              "--chip-size", "16"])
    assert res.exit_code == 2, res.output
    assert "no chips: all 50 rows rejected" in res.output and "rejected.csv" in res.output
    rej = pd.read_csv(out / "rejected.csv", dtype=str, keep_default_na=False)
    orig = pd.read_csv(src, dtype=str, keep_default_na=False)
    assert len(rej) == 50
    for col in ("x", "y", "label", "date"):
        assert (rej[col] != "").all(), col
        assert sorted(rej[col]) == sorted(orig[col])
    assert rej.reason.str.contains("outside the footprint of every HLS item").all()
    assert not (out / "dataset.json").exists() and not (out / "index.parquet").exists()


def _grid_and_polygon(world: dict):
    lon, lat = (world["bbox"][0] + world["bbox"][2]) / 2, (world["bbox"][1] + world["bbox"][3]) / 2
    epsg = utm_epsg(lon, lat)
    x, y = to_crs(Point(lon, lat), 4326, epsg).coords[0]
    cg = ChipGrid(epsg, 16, 30.0)
    grid = cg.spec(*cg.cell_of(x, y))
    t = grid.transform
    poly = to_crs(box(t.c + 30, t.f - 15 * 30, t.c + 15 * 30, t.f - 30), epsg, 4326)
    point = to_crs(Point(t.c + 8.5 * 30, t.f - 8.5 * 30), epsg, 4326)
    return grid, poly, point


@pytest.mark.parametrize("order", ["polygon first", "point first"])
def test_later_rows_win_whatever_the_geometry(small_world, order):
    grid, poly, point = _grid_and_polygon(small_world)
    geoms, labels = ([poly, point], [0, 1]) if order == "polygon first" else ([point, poly], [1, 0])
    out = burn_labels(grid, geoms, labels)
    want = labels[-1]
    assert out[8, 8] == want
    assert (out == 0).sum() > 100  # the polygon is burnt around it


def test_duplicates_count_once_and_conflicts_reject_both(small_world, tmp_path):
    rows = flood_rows(small_world).head(4)
    dup = pd.concat([rows, rows.iloc[[1]]], ignore_index=True)  # row 5 repeats row 2
    clash = rows.iloc[[2]].copy()
    clash["label"] = "water" if clash["label"].iloc[0] == "land" else "land"
    table = pd.concat([dup, clash], ignore_index=True)  # row 6 contradicts row 3
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    obs = load_observations(path)
    assert obs.notes and "1 exact duplicate" in obs.notes[0]
    res = run_chips(small_world, path, tmp_path / "o", "--max-cloud", "100", "--min-valid", "0")
    assert res.exit_code == 0, res.output
    rej = pd.read_csv(tmp_path / "o" / "rejected.csv")
    reason = dict(zip(rej.source_row, rej.reason, strict=False))
    assert "exact duplicate of row 2" in reason[5]
    assert "conflict" in reason[3] and reason[6] == reason[3]
    listed = reason[3].split("rows ")[1].split(" give")[0].split(", ")
    assert {"3", "6"} <= set(listed)
    used = {r for rs in pd.read_parquet(tmp_path / "o" / "index.parquet")["source_rows"]
            for r in rs}
    assert not used & {3, 5, 6}


def test_strict_fails_on_a_chip_rejection_and_writes_nothing(small_world, tmp_path):
    out = tmp_path / "o"
    # a tight cloud limit rejects some chips of the world: under --strict that is an error
    res = run_chips(small_world, small_world["tasks"]["flood"]["observations"], out,
                    "--max-cloud", "1", "--strict")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "--strict" in lines[-1], res.output
    assert not out.exists()


def test_an_asset_off_its_item_footprint_is_a_named_rejection(small_world, tmp_path):
    cat = json.loads(Path(small_world["catalog"]).read_text())
    root = Path(small_world["catalog"]).parent
    feats = cat["features"]
    epsg_of = {f["id"]: f["properties"].get("proj:epsg") for f in feats}
    # point one item's red band at a tile of the other UTM zone (same day when possible)
    victim = feats[len(feats) // 2]
    other = next(f for f in feats if epsg_of[f["id"]] != epsg_of[victim["id"]])
    href = other["assets"]["B04"]["href"] if "B04" in other["assets"] else None
    key = "B04" if href else next(k for k in victim["assets"] if k.lower() in ("red", "b04"))
    href = href or other["assets"][key]["href"]
    victim["assets"][key]["href"] = str((root / href).resolve()) if not Path(href).is_absolute() \
        else href
    for f in feats:  # keep every other href valid from the new location
        for a in f["assets"].values():
            if not Path(a["href"]).is_absolute() and "://" not in a["href"]:
                a["href"] = str((root / a["href"]).resolve())
    for link in cat.get("links", []):
        link["href"] = str((root / link["href"]).resolve()) if "://" not in link["href"] else \
            link["href"]
    shutil.copytree(root / "collections", tmp_path / "collections")
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps(cat))
    out = tmp_path / "o"
    res = runner.invoke(app, ["chips", small_world["tasks"]["flood"]["observations"],
                              "--catalog", str(bad), "--out", str(out), *OPTS, "--max-cloud",
                              "100", "--min-valid", "0"])
    assert res.exit_code == 0, res.output
    rej = pd.read_csv(out / "rejected.csv")
    named = rej[rej.reason.str.contains("does not overlap the item's footprint", na=False)]
    assert len(named) >= 1, rej.reason.unique()
    assert named.reason.str.contains(Path(victim["assets"][key]["href"]).name).all()

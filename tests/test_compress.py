"""Compression methods and the compress/decompress commands on tables and rasters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from typer.testing import CliRunner

from terrastill.cli import app
from terrastill.embeddings.compress import Codec, fit, pack, parse_method, unpack
from terrastill.embeddings.evaluate import hamming_distances
from terrastill.embeddings.table import read_table, write_table
from terrastill.errors import BadInputError

runner = CliRunner()
METHODS = ["float32", "int8", "int4", "int2", "binary", "binary:sign", "pca:6", "pca:6+int8",
           "pca:6+int4", "pca:6+binary", "rot:int8", "rot:int4", "rot:int2", "pca:6+rot:int4",
           "rot:binary", "pca:6+rot:binary"]


def gaussian(n: int = 400, d: int = 13, seed: int = 0) -> np.ndarray:
    """Correlated Gaussian vectors with an offset and unequal scales (like real embeddings)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(0.2, 2.0, d)
    return (rng.standard_normal((n, d)) @ mix + 3.0).astype(np.float32)


def make_table(path: Path, x: np.ndarray, split: bool = True, labels: bool = True) -> Path:
    n = len(x)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)],
                          "geometry": [shapely.Point(i * 1e-3, 0.0) for i in range(n)]})
    if labels:
        frame["label"] = [f"c{i % 3}" for i in range(n)]
    if split:
        frame["split"] = ["train" if i % 5 < 3 else ("val" if i % 5 == 3 else "test")
                          for i in range(n)]
    return write_table(path, frame, x, {"model": {"name": "synthetic"}})


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    text = " ".join(lines)
    assert lines[0].startswith("error:"), result.output
    for w in words:
        assert w in text, text


def test_method_strings_parse_to_canonical_names():
    assert str(parse_method("INT8")) == "int8"
    assert str(parse_method("rot-int4")) == "rot:int4"
    assert str(parse_method("pca:64")) == "pca:64"
    assert str(parse_method("pca:64+float32")) == "pca:64"
    assert str(parse_method(" pca:16 + int4 ")) == "pca:16+int4"
    assert parse_method("binary:sign").sign and not parse_method("binary").sign
    m = parse_method("pca:32+rot:int2")
    assert (m.pca, m.quant, m.rotate, m.bits) == (32, "int2", True, 2)
    assert str(parse_method("rot-binary")) == "rot:binary"
    for bad in ("int3", "pca:0", "pca:x+int8", "rot:binary:sign", "rot:float32", "int8:sign", "",
                "pca:4+pca:4", "int8+pca:4"):
        with pytest.raises(BadInputError, match="pca:K"):
            parse_method(bad)


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_through_metadata(method):
    x = gaussian()
    codec = fit(method, x[:300], seed=3)
    codes = codec.encode(x)
    assert codes.shape[1] == (codec.bytes_per_embedding if codec.method.is_codes
                              else codec.code_dim)
    assert codes.dtype == (np.uint8 if codec.method.is_codes else np.float32)
    again = Codec.from_meta(json.loads(json.dumps(codec.to_meta())))
    np.testing.assert_array_equal(again.encode(x), codes)
    np.testing.assert_array_equal(again.decode(codes), codec.decode(codes))
    assert codec.decode(codes).shape == x.shape


def test_exact_bytes_per_embedding():
    x = gaussian(d=13)
    sizes = {m: fit(m, x).bytes_per_embedding for m in
             ("float32", "int8", "int4", "int2", "binary", "pca:6", "pca:6+int4", "rot:int2")}
    assert sizes == {"float32": 52, "int8": 13, "int4": 7, "int2": 4, "binary": 2, "pca:6": 24,
                     "pca:6+int4": 3, "rot:int2": 4}


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_unpack_inverse(bits):
    q = np.random.default_rng(bits).integers(0, 2 ** bits, (7, 13)).astype(np.uint8)
    packed = pack(q, bits)
    assert packed.shape == (7, -(-13 * bits // 8))
    np.testing.assert_array_equal(unpack(packed, bits, 13), q)


def test_int4_packs_two_codes_per_byte_high_first():
    np.testing.assert_array_equal(pack(np.array([[1, 2, 3]], np.uint8), 4), [[0x12, 0x30]])
    np.testing.assert_array_equal(pack(np.array([[1, 2, 3, 0, 1]], np.uint8), 2),
                                  [[0b01101100, 0b01000000]])


@pytest.mark.parametrize("method,bits", [("int8", 8), ("int4", 4), ("int2", 2)])
def test_affine_error_bounded_by_half_a_step(method, bits):
    x = gaussian()
    train = x[:300]
    codec = fit(method, train)
    step = (train.max(0) - train.min(0)) / (2 ** bits - 1)
    np.testing.assert_allclose(codec.params["step"], step, rtol=1e-5)
    err = np.abs(codec.decode(codec.encode(train)) - train)
    assert np.all(err <= step / 2 + 1e-5)
    # values beyond the train range clip to its ends
    far = train[:1] + 100 * (train.max(0) - train.min(0))
    np.testing.assert_allclose(codec.decode(codec.encode(far))[0], train.max(0), rtol=1e-5)


def test_binary_codes_hamming_and_decoding():
    x = gaussian()
    train = x[:300]
    codec = fit("binary", train)
    np.testing.assert_allclose(codec.params["threshold"], train.mean(0), rtol=1e-6)
    bits = x > train.mean(0)
    codes = codec.encode(x)
    np.testing.assert_array_equal(codes, np.packbits(bits, axis=1))
    ham = hamming_distances(codes[:20], codes[20:50])
    np.testing.assert_array_equal(ham, (bits[:20, None, :] != bits[None, 20:50, :]).sum(2))
    tb = train > train.mean(0)
    hi = np.array([train[tb[:, j], j].mean() for j in range(x.shape[1])])
    lo = np.array([train[~tb[:, j], j].mean() for j in range(x.shape[1])])
    np.testing.assert_allclose(codec.decode(codes), np.where(bits, hi, lo), rtol=1e-5)
    sign = fit("binary:sign", train - 3.0)
    assert np.all(sign.params["threshold"] == 0)


def test_rot_binary_is_signs_of_rotated_centred_unit_vectors():
    x = gaussian()
    train = x[:300].astype(np.float64)
    codec = fit("rot:binary", train, seed=5)
    p = codec.params
    r = p["rotation"]
    np.testing.assert_allclose(r @ r.T, np.eye(13), atol=1e-10)
    assert codec.bytes_per_embedding == 2
    u = train / np.linalg.norm(train, axis=1, keepdims=True)
    np.testing.assert_allclose(p["center"], u.mean(0), rtol=1e-12)
    y = (u - u.mean(0)) @ r.T
    np.testing.assert_allclose(p["threshold"], y.mean(0), atol=1e-12)  # centred: about 0
    bits = y > p["threshold"]
    assert (codec.encode(train) == np.packbits(bits, axis=1)).all()
    assert (codec.encode(7.5 * train[:9]) == codec.encode(train[:9])).all()  # length ignored
    # decoded: the binary decode of the rotated bits, rotated back, re-centred, times mean length
    hi = np.array([y[bits[:, j], j].mean() for j in range(13)])
    lo = np.array([y[~bits[:, j], j].mean() for j in range(13)])
    expect = (np.where(bits, hi, lo) @ r + u.mean(0)) * np.linalg.norm(train, axis=1).mean()
    np.testing.assert_allclose(codec.decode(codec.encode(train)), expect, rtol=1e-5, atol=1e-5)
    # Hamming between codes tracks the angle better than plain mean-threshold bits here
    plain = fit("binary", train)
    cos = u @ u.T
    def corr(c: Codec) -> float:
        ham = hamming_distances(c.encode(train), c.encode(train))
        return float(np.corrcoef(-ham.ravel(), cos.ravel())[0, 1])
    assert corr(codec) > corr(plain)
    again = Codec.from_meta(json.loads(json.dumps(codec.to_meta())))
    assert (again.encode(x[300:]) == codec.encode(x[300:])).all()
    broken = codec.to_meta()
    del broken["params"]["scale"]
    with pytest.raises(BadInputError, match="scale"):
        Codec.from_meta(broken)


def test_rotation_is_orthogonal_seeded_and_stored():
    x = gaussian()
    codec = fit("rot:int4", x[:300], seed=7)
    r = codec.params["rotation"]
    np.testing.assert_allclose(r @ r.T, np.eye(13), atol=1e-10)
    np.testing.assert_array_equal(fit("rot:int4", x[:300], seed=7).params["rotation"], r)
    assert not np.allclose(fit("rot:int4", x[:300], seed=8).params["rotation"], r)
    # symmetric per-dimension range from max |R(x − μ)| over train; x̂ = μ + Rᵀ Q⁻¹(Q(R(x − μ)))
    mu = x[:300].astype(np.float64).mean(0)
    y = (x[:300] - mu) @ r.T
    np.testing.assert_allclose(codec.params["lo"], -np.abs(y).max(0), rtol=1e-6)
    q = unpack(codec.encode(x[:5]), 4, 13)
    expect = (codec.params["lo"] + q * codec.params["step"]) @ r + mu
    np.testing.assert_allclose(codec.decode(codec.encode(x[:5])), expect, rtol=1e-5)
    meta = json.loads(json.dumps(codec.to_meta()))
    np.testing.assert_array_equal(np.asarray(meta["params"]["rotation"]), r)


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    x = gaussian()
    ref = PCA(n_components=6, svd_solver="full").fit(x[:300])
    codec = fit("pca:6", x[:300])
    # scikit-learn fits the float32 input in float32: agreement to float32 precision only
    # (the last digits move with the CPU's vector width)
    np.testing.assert_allclose(codec.params["pca_explained_variance_ratio"],
                               ref.explained_variance_ratio_, rtol=1e-5)
    assert codec.explained_variance == pytest.approx(ref.explained_variance_ratio_.sum())
    np.testing.assert_allclose(codec.decode(codec.encode(x)),
                               ref.inverse_transform(ref.transform(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.abs(codec.decode(codec.encode(x), reduced=True)),
                               np.abs(ref.transform(x)), rtol=1e-4, atol=1e-4)
    with pytest.raises(BadInputError, match="exceeds the embedding dimension"):
        fit("pca:14", x)


def test_compress_table_fits_on_train_only(tmp_path):
    x = gaussian()
    a = make_table(tmp_path / "a.parquet", x)
    y = x.copy()
    test_rows = np.arange(len(x)) % 5 == 4
    y[test_rows] *= 50.0  # only test rows change
    b = make_table(tmp_path / "b.parquet", y)
    for method in ("int8", "binary", "pca:4+rot:int2"):
        for src in (a, b):
            res = runner.invoke(app, ["compress", str(src), "--method", method, "--out",
                                      str(tmp_path / method / src.stem)])
            assert res.exit_code == 0, res.output
        pa = read_table(tmp_path / method / "a").meta["compression"]
        pb = read_table(tmp_path / method / "b").meta["compression"]
        assert pa["params"] == pb["params"] and pa["fit"]["split"] == "train"
        assert pa["fit"]["rows"] == int((np.arange(len(x)) % 5 < 3).sum())


def test_compress_decompress_table_cli(tmp_path):
    x = gaussian()
    src = make_table(tmp_path / "emb.parquet", x, split=False)
    res = runner.invoke(app, ["compress", str(src), "-m", "pca:6+int8", "--out",
                              str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "6 B/embedding" in res.output and "no split column" in res.output
    comp = read_table(tmp_path / "c")
    assert comp.is_codes and comp.vectors.shape == (400, 6)
    meta = comp.meta["compression"]
    assert meta["method"] == "pca:6+int8" and meta["bytes_per_embedding"] == 6
    assert comp.meta["model"] == {"name": "synthetic"} and comp.meta["dim"] == 13
    assert list(comp.frame["id"]) == [f"r{i}" for i in range(400)]
    res = runner.invoke(app, ["decompress", str(tmp_path / "c"), "--out",
                              str(tmp_path / "d.parquet")])
    assert res.exit_code == 0, res.output
    dec = read_table(tmp_path / "d.parquet")
    assert dec.vectors.dtype == np.float32 and dec.vectors.shape == x.shape
    assert "compression" not in dec.meta and dec.meta["decompressed_from"]["method"] == "pca:6+int8"
    codec = Codec.from_meta(meta)
    np.testing.assert_array_equal(dec.vectors, codec.decode(comp.vectors))
    res = runner.invoke(app, ["decompress", str(tmp_path / "c"), "--reduced", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 0 and read_table(tmp_path / "r").vectors.shape == (400, 6)
    # --params: a second product compressed with the first one's parameters
    other = make_table(tmp_path / "o.parquet", gaussian(seed=5), split=False)
    res = runner.invoke(app, ["compress", str(other), "--params", str(tmp_path / "c"),
                              "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
    assert read_table(tmp_path / "o2").meta["compression"]["params"] == meta["params"]


def write_raster(path: Path, d: int = 8, dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((30 * 40, 3)) @ rng.standard_normal((3, d))
         + 0.05 * rng.standard_normal((30 * 40, d))).T.reshape(d, 30, 40).astype(np.float32)
    x[:, :4, :5] = np.nan
    prof = dict(driver="GTiff", width=40, height=30, count=d, crs="EPSG:32633",
                transform=from_origin(500000, 5000000, 80, 80))
    with rasterio.open(path, "w", dtype=dtype, nodata=float("nan") if dtype == "float32"
                       else 0, **prof) as dst:
        if dtype == "float32":
            dst.write(x)
        else:  # int8-style product: codes 1..255 with per-band scale/offset, 0 = nodata
            lo, hi = np.nanmin(x, (1, 2)), np.nanmax(x, (1, 2))
            step = (hi - lo) / 254
            q = np.rint((x - lo[:, None, None]) / step[:, None, None]) + 1
            dst.write(np.where(np.isnan(x), 0, q).astype(np.uint8))
            dst.scales = tuple(step)
            dst.offsets = tuple(lo - step)
        for i in range(d):
            dst.set_band_description(i + 1, f"emb:{i:03d}")
        dst.update_tags(model="synthetic")
    return x


def read_real(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        data = src.read(masked=True).astype(np.float64)
        s, o = np.array(src.scales)[:, None, None], np.array(src.offsets)[:, None, None]
        return (data * s + o).filled(np.nan)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_raster_int8_round_trip(tmp_path, dtype):
    from rio_cogeo.cogeo import cog_validate

    src = tmp_path / "emb.tif"
    write_raster(src, dtype=dtype)
    orig = read_real(src)
    res = runner.invoke(app, ["compress", str(src), "-m", "int8", "--out", str(tmp_path / "c.tif")])
    assert res.exit_code == 0, res.output
    assert cog_validate(str(tmp_path / "c.tif"), quiet=True)[0]
    with rasterio.open(tmp_path / "c.tif") as c:
        assert c.dtypes[0] == "uint8" and c.nodata == 255 and c.count == 8
        assert c.descriptions[0] == "emb:000" and c.tags()["model"] == "synthetic"
        steps = np.array(c.scales)
        assert json.loads(c.tags()["terrastill_compression"])["method"] == "int8"
    got = read_real(tmp_path / "c.tif")  # what rasterio / QGIS show: real values
    assert np.array_equal(np.isnan(got), np.isnan(orig))
    assert np.nanmax(np.abs(got - orig) / steps[:, None, None]) <= 0.5 + 1e-6
    res = runner.invoke(app, ["decompress", str(tmp_path / "c.tif"), "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "d" / "c.tif") as d:
        assert d.dtypes[0] == "float32" and d.count == 8
    np.testing.assert_allclose(read_real(tmp_path / "d" / "c.tif"), got, rtol=1e-5, atol=1e-6)


def test_raster_pca_int8(tmp_path):
    src = tmp_path / "emb.tif"
    orig = write_raster(src)
    res = runner.invoke(app, ["compress", str(src), "-m", "pca:3+int8", "--out",
                              str(tmp_path / "p.tif"), "--sample", "500"])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "p.tif") as p:
        assert p.count == 3 and p.descriptions == ("pca:000", "pca:001", "pca:002")
        meta = json.loads(p.tags()["terrastill_compression"])
    assert len(meta["params"]["pca_components"]) == 3 and meta["levels"] == 255
    assert "subsample of" in meta["fit"]["split"]
    res = runner.invoke(app, ["decompress", str(tmp_path / "p.tif"), "--out",
                              str(tmp_path / "back.tif")])
    assert res.exit_code == 0, res.output
    back = read_real(tmp_path / "back.tif")
    assert back.shape == orig.shape and np.array_equal(np.isnan(back), np.isnan(orig))
    rel = np.nanmean((back - orig) ** 2) / np.nanvar(orig)
    assert rel < 0.01  # three components hold the synthetic signal


def test_bad_inputs_exit_2_and_write_nothing(tmp_path):
    x = gaussian()
    good = make_table(tmp_path / "in" / "emb.parquet", x)
    runner.invoke(app, ["compress", str(good), "-m", "int4", "--out", str(tmp_path / "in/i4")])
    runner.invoke(app, ["compress", str(good), "-m", "binary", "--out", str(tmp_path / "in/b")])
    small = make_table(tmp_path / "in" / "small.parquet", gaussian(d=7))
    corrupt = tmp_path / "in" / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    # a table whose codes are narrower than its stored method says
    i4 = read_table(tmp_path / "in" / "i4")
    meta = {**i4.meta, "compression": fit("int8", x).to_meta()}
    write_table(tmp_path / "in" / "liar.parquet", i4.frame, i4.vectors, meta)
    raster = tmp_path / "in" / "r.tif"
    write_raster(raster)
    out = tmp_path / "out"
    cases = [
        (["compress", str(good), "-m", "int3", "--out", str(out)], ["int3", "pca:K"]),
        (["compress", str(good), "--out", str(out)], ["--method"]),
        (["compress", str(small), "--params", str(tmp_path / "in/i4"), "--out", str(out)],
         ["7-dimensional", "13"]),
        (["decompress", str(tmp_path / "in/b"), "--params", str(tmp_path / "in/i4"),
          "--out", str(out)], ["binary", "int4"]),
        (["decompress", str(tmp_path / "in/liar.parquet"), "--out", str(out)],
         ["7 bytes", "int8"]),
        (["compress", str(corrupt), "-m", "int8", "--out", str(out)], ["not a Parquet"]),
        (["compress", str(tmp_path / "in/i4"), "-m", "int8", "--out", str(out)],
         ["already compressed"]),
        (["decompress", str(good), "--out", str(out)], ["not a compressed table"]),
        (["compress", str(raster), "-m", "int4", "--out", str(out)], ["raster holds"]),
        (["compress", str(good), "-m", "pca:20", "--out", str(out)], ["exceeds"]),
        (["compress", str(tmp_path / "nope.parquet"), "-m", "int8", "--out", str(out)],
         ["no such"]),
    ]
    for args, words in cases:
        one_line_error(runner.invoke(app, args), *words)
    assert not out.exists()
    assert not [p for p in (tmp_path / "in").iterdir() if p.name.startswith(".tmp-")]

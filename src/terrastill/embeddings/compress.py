"""Embedding compression methods: parse a method string, fit on train rows, encode, decode.

Grammar (case-insensitive): ``Q`` or ``pca:K+Q`` where ``Q`` is ``float32``, ``int8``, ``int4``,
``int2``, ``binary``, ``binary:sign`` or ``rot:int8|rot:int4|rot:int2|rot:binary`` (``rot-int4``
also reads); ``pca:K`` alone keeps K float32 values. Every parameter is fitted on the rows given
to :func:`fit` (the train split) and serialised as plain lists by :meth:`Codec.to_meta`, so
:meth:`Codec.from_meta` decodes with nothing else.

- ``intB``: per-dimension min–max affine with 2^B levels, ``x̂ = lo + q·step``; int4 packs
  two codes per byte, int2 four (first dimension in the high bits).
- ``binary``: a bit per dimension, set where x > threshold (the train mean, or 0 for
  ``binary:sign``), packed with ``np.packbits``; a bit decodes to the train mean of the values
  on its side of the threshold in that dimension.
- ``pca:K``: scikit-learn PCA fitted on train; codes quantise the K scores.
- ``rot:intB``: centre on the train mean μ, rotate by a seeded Haar-random orthogonal R (QR of
  a Gaussian matrix, signs fixed by diag(R)), then quantise symmetrically per dimension over
  [−s, s] with s = max |value| on train (2^B levels, mid-rise): ``x̂ = μ + Rᵀ Q⁻¹(Q(R(x − μ)))``.
- ``rot:binary``: sign bits of ``R(x/‖x‖ − μ)``, μ the train mean of the unit vectors and R as
  for ``rot:intB``: unit length first because these codes serve cosine neighbours (Hamming
  distance between them tracks the angle), the rotation spreads correlated dimensions over
  every bit. Bits decode as ``binary`` does, rotated back, plus μ, times the train rows' mean
  length ``ℓ``: ``x̂ = ℓ (μ + Rᵀ b̂)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terrastill.errors import BadInputError

GRAMMAR = ("Q or pca:K+Q with Q one of float32, int8, int4, int2, binary, binary:sign, "
           "rot:int8, rot:int4, rot:int2, rot:binary (or pca:K alone), e.g. int8, pca:64+int8, "
           "rot:int4")
BITS = {"float32": 32, "int8": 8, "int4": 4, "int2": 2, "binary": 1}
_QUANT = re.compile(r"^(?:(rot)[:-])?(float32|int8|int4|int2|binary)(?::(sign|mean))?$")
_PCA = re.compile(r"^pca:(\d+)$")
ROTATION_STREAM = 0x726F74


@dataclass(frozen=True)
class Method:
    """A parsed method string: optional PCA to ``pca`` dims, then a quantiser."""

    quant: str = "float32"
    pca: int | None = None
    rotate: bool = False
    sign: bool = False

    @property
    def bits(self) -> int:
        return BITS[self.quant]

    @property
    def is_codes(self) -> bool:
        """Whether the product stores byte codes (else float32 vectors)."""
        return self.quant != "float32"

    def __str__(self) -> str:
        q = ("rot:" if self.rotate else "") + self.quant + (":sign" if self.sign else "")
        if self.pca is None:
            return q
        return f"pca:{self.pca}" if q == "float32" else f"pca:{self.pca}+{q}"


def parse_method(text: str) -> Method:
    """Parse a method string; BadInputError naming it and the grammar when it does not parse."""
    raw = str(text)
    s = raw.strip().lower().replace(" ", "")
    parts = s.split("+") if s else [""]
    pca = None
    if len(parts) > 2:
        raise BadInputError(f"method {raw!r} does not parse: expected {GRAMMAR}")
    m = _PCA.match(parts[0])
    if m:
        pca = int(m.group(1))
        if pca < 1:
            raise BadInputError(f"method {raw!r}: pca:K needs K ≥ 1")
        parts = parts[1:] or ["float32"]
    if len(parts) != 1 or not (q := _QUANT.match(parts[0])):
        raise BadInputError(f"method {raw!r} does not parse: expected {GRAMMAR}")
    rot, quant, opt = q.group(1) is not None, q.group(2), q.group(3)
    if opt is not None and (quant != "binary" or rot):
        raise BadInputError(f"method {raw!r}: ':{opt}' applies to binary only ({GRAMMAR})")
    if rot and quant not in ("int8", "int4", "int2", "binary"):
        raise BadInputError(f"method {raw!r}: rot: takes int8, int4, int2 or binary "
                            f"({GRAMMAR})")
    return Method(quant=quant, pca=pca, rotate=rot, sign=opt == "sign")


def code_bytes(dims: int, bits: int) -> int:
    """Exact bytes one embedding of ``dims`` values at ``bits`` bits each occupies."""
    return dims * 4 if bits == 32 else math.ceil(dims * bits / 8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack (N, D) integer codes < 2**bits into (N, ceil(D·bits/8)) bytes, first code high."""
    codes = np.asarray(codes, np.uint8)
    if bits == 8:
        return codes.copy()
    if bits == 1:
        return np.packbits(codes, axis=1)
    per = 8 // bits
    n, d = codes.shape
    c = np.pad(codes, ((0, 0), (0, (-d) % per))).reshape(n, -1, per)
    shifts = (8 - bits * (np.arange(per) + 1)).astype(np.uint8)
    return np.bitwise_or.reduce(c << shifts, axis=2).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, dims: int) -> np.ndarray:
    """Inverse of :func:`pack`: (N, B) bytes to (N, dims) integer codes."""
    packed = np.asarray(packed, np.uint8)
    if bits == 8:
        return packed[:, :dims].copy()
    if bits == 1:
        return np.unpackbits(packed, axis=1, count=dims)
    per = 8 // bits
    shifts = (8 - bits * (np.arange(per) + 1)).astype(np.uint8)
    c = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return c.reshape(len(packed), -1)[:, :dims]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def haar_rotation(dims: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal (dims, dims) matrix: QR of a seeded Gaussian, signs fixed."""
    # a stream of its own (seed, "rot"): never the same numbers as data drawn with ``seed``
    g = np.random.default_rng([seed, ROTATION_STREAM]).standard_normal((dims, dims))
    q, r = np.linalg.qr(g)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


@dataclass
class Codec:
    """A fitted method: its parameters (float64 arrays) and how it was fitted."""

    method: Method
    input_dim: int
    params: dict[str, np.ndarray] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    levels: int = 0

    @property
    def code_dim(self) -> int:
        return self.method.pca or self.input_dim

    @property
    def bytes_per_embedding(self) -> int:
        return code_bytes(self.code_dim, self.method.bits)

    @property
    def explained_variance(self) -> float | None:
        ratio = self.params.get("pca_explained_variance_ratio")
        return None if ratio is None else float(np.sum(ratio))

    def reduce(self, x: np.ndarray) -> np.ndarray:
        """PCA scores (or ``x`` itself without PCA), float64."""
        x = np.asarray(x, np.float64)
        if self.method.pca is None:
            return x
        return (x - self.params["pca_mean"]) @ self.params["pca_components"].T

    def expand(self, z: np.ndarray) -> np.ndarray:
        """Back from PCA scores to the input space."""
        if self.method.pca is None:
            return z
        return z @ self.params["pca_components"] + self.params["pca_mean"]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(N, input_dim) float vectors → (N, B) uint8 codes, or (N, K) float32 for float32."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise BadInputError(f"{self.method}: vectors have {x.shape[-1]} dimensions, the "
                                f"fitted method expects {self.input_dim}")
        z = self.reduce(x)
        m, p = self.method, self.params
        if m.quant == "float32":
            return z.astype(np.float32)
        if m.rotate:
            z = (unit_rows(z) if m.quant == "binary" else z) - p["center"]
            z = z @ p["rotation"].T
        if m.quant == "binary":
            return pack((z > p["threshold"]).astype(np.uint8), 1)
        q = np.rint((z - p["lo"]) / p["step"])
        return pack(np.clip(q, 0, self.levels - 1).astype(np.uint8), m.bits)

    def decode(self, codes: np.ndarray, reduced: bool = False) -> np.ndarray:
        """Codes → float32 vectors in the input space (or the K PCA scores if ``reduced``)."""
        codes = np.asarray(codes)
        m, p = self.method, self.params
        if m.is_codes:
            if codes.dtype != np.uint8 or codes.ndim != 2:
                raise BadInputError(f"{m} decodes uint8 codes; got {codes.dtype} "
                                    f"{codes.shape} values")
            if codes.shape[1] != self.bytes_per_embedding:
                raise BadInputError(f"codes are {codes.shape[1]} bytes wide but {m} over "
                                    f"{self.code_dim} dims stores {self.bytes_per_embedding}")
        elif codes.ndim != 2 or codes.shape[1] != self.code_dim or codes.dtype == np.uint8:
            raise BadInputError(f"{m} stores {self.code_dim} float32 values per row; got "
                                f"{codes.dtype} {codes.shape}")
        if m.quant == "float32":
            z = codes.astype(np.float64)
        elif m.quant == "binary":
            bits = unpack(codes, 1, self.code_dim).astype(bool)
            z = np.where(bits, p["high"], p["low"])
            if m.rotate:
                z = (z @ p["rotation"] + p["center"]) * p["scale"]
        else:
            z = p["lo"] + unpack(codes, m.bits, self.code_dim) * p["step"]
            if m.rotate:
                z = z @ p["rotation"] + p["center"]
        return (z if reduced else self.expand(z)).astype(np.float32)

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready description: method, sizes, fit provenance and every parameter."""
        return {"method": str(self.method), "input_dim": self.input_dim,
                "code_dim": self.code_dim, "bits": self.method.bits,
                "bytes_per_embedding": self.bytes_per_embedding,
                "stored": "codes" if self.method.is_codes else "float32",
                "levels": self.levels, "fit": dict(self.fit),
                "params": {k: v.tolist() for k, v in self.params.items()}}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], where: str = "product") -> Codec:
        """Rebuild a codec from :meth:`to_meta` output, checking every parameter's shape."""
        try:
            method = parse_method(meta["method"])
            codec = cls(method=method, input_dim=int(meta["input_dim"]),
                        params={k: np.asarray(v, np.float64)
                                for k, v in dict(meta.get("params", {})).items()},
                        fit=dict(meta.get("fit", {})), levels=int(meta.get("levels", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"{where}: compression metadata is incomplete or corrupt "
                                f"({type(exc).__name__}: {exc})") from None
        bad = codec._shape_problem()
        if bad:
            raise BadInputError(f"{where}: compression metadata for {method} is inconsistent "
                                f"({bad})")
        return codec

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, k, m = self.input_dim, self.code_dim, self.method
        out: dict[str, tuple[int, ...]] = {}
        if m.pca is not None:
            out.update(pca_mean=(d,), pca_components=(k, d), pca_explained_variance_ratio=(k,))
        if m.quant == "binary":
            out.update(threshold=(k,), low=(k,), high=(k,))
        elif m.quant != "float32":
            out.update(lo=(k,), step=(k,))
        if m.rotate:
            out.update(center=(k,), rotation=(k, k))
            if m.quant == "binary":
                out.update(scale=(1,))
        return out

    def _shape_problem(self) -> str | None:
        for name, shape in self._expected_shapes().items():
            got = self.params.get(name)
            if got is None:
                return f"no parameter {name!r}"
            if got.shape != shape:
                return f"{name!r} has shape {got.shape}, expected {shape}"
            if not np.all(np.isfinite(got)):
                return f"{name!r} has non-finite values"
        if self.method.quant not in ("float32", "binary") and \
                self.levels != 2 ** self.method.bits and self.levels != 2 ** self.method.bits - 1:
            return f"levels {self.levels} do not fit {self.method.bits} bits"
        return None


def fit(method: Method | str, x: np.ndarray, seed: int = 0, levels: int | None = None,
        fit_info: Mapping[str, Any] | None = None) -> Codec:
    """Fit ``method`` on rows ``x`` (the train split). ``levels`` overrides 2**bits (a raster
    keeps one code free for nodata)."""
    m = parse_method(method) if isinstance(method, str) else method
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n < 1:
        raise BadInputError(f"{m}: no rows to fit on")
    if not np.all(np.isfinite(x)):
        raise BadInputError(f"{m}: the fit rows contain NaN or infinite values")
    params: dict[str, np.ndarray] = {}
    if m.pca is not None:
        from sklearn.decomposition import PCA

        if m.pca > d:
            raise BadInputError(f"{m}: K = {m.pca} exceeds the embedding dimension {d}")
        if m.pca > n:
            raise BadInputError(f"{m}: K = {m.pca} exceeds the {n} rows it is fitted on")
        pca = PCA(n_components=m.pca, svd_solver="full", random_state=seed).fit(x)
        params.update(pca_mean=pca.mean_, pca_components=pca.components_,
                      pca_explained_variance_ratio=pca.explained_variance_ratio_)
    codec = Codec(method=m, input_dim=d, params=params,
                  fit={"rows": n, "seed": seed, **dict(fit_info or {})})
    z = codec.reduce(x)
    if m.rotate and m.quant == "binary":
        unit = unit_rows(z)
        center = unit.mean(axis=0)
        rot = haar_rotation(z.shape[1], seed)
        params.update(center=center, rotation=rot,
                      scale=np.array([np.linalg.norm(z, axis=1).mean()]))
        z = (unit - center) @ rot.T
    if m.quant == "binary":
        thr = np.zeros(z.shape[1]) if m.sign else z.mean(axis=0)
        above = z > thr
        n_hi = above.sum(axis=0)
        s_hi = np.where(above, z, 0.0).sum(axis=0)
        s_lo = np.where(above, 0.0, z).sum(axis=0)
        params.update(threshold=thr,
                      high=np.where(n_hi > 0, s_hi / np.maximum(n_hi, 1), thr),
                      low=np.where(n - n_hi > 0, s_lo / np.maximum(n - n_hi, 1), thr))
    elif m.quant != "float32":
        codec.levels = int(levels or 2 ** m.bits)
        if m.rotate:
            center = z.mean(axis=0)
            rot = haar_rotation(z.shape[1], seed)
            y = (z - center) @ rot.T
            s = np.abs(y).max(axis=0)
            params.update(center=center, rotation=rot)
            lo, hi = -s, s
        else:
            lo, hi = z.min(axis=0), z.max(axis=0)
        span = hi - lo
        params.update(lo=lo, step=np.where(span > 0, span / (codec.levels - 1), 1.0))
    return codec

"""HTTP helpers for remote image assets: GDAL options (retries, .netrc auth) and retried reads.

The chip reader passes :func:`gdal_env` to ``rasterio.Env`` so every ``/vsicurl/`` read retries
429/5xx answers with GDAL's own exponential backoff and authenticates with ``~/.netrc`` (NASA
Earthdata's redirect-to-login flow needs a cookie file too). On top of that,
:func:`open_raster` / :func:`read_asset` retry whole opens/reads that still fail transiently
(dropped connections, truncated bodies) and turn every failure into :class:`AssetReadError`
naming the href, so one bad asset rejects one observation group instead of crashing a run.

Example::

    from terrastill.io_http import gdal_env, read_asset
    with rasterio.Env(**gdal_env()):
        arr = read_asset(href, lambda ds: ds.read(1, window=win))
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from terrastill.errors import AssetReadError
from terrastill.retry import TRANSIENT_STATUS, RetryPolicy, retry_call

log = logging.getLogger(__name__)
T = TypeVar("T")

COOKIE_FILE = Path("~/.cache/terrastill/gdal-cookies.txt")
DEFAULT_BLOCK_CACHE_MB = 256  # GDAL block cache for reads unless GDAL_CACHEMAX is set


def netrc_path() -> Path | None:
    """The .netrc file curl would use: ``$NETRC`` or ``~/.netrc`` (``~/_netrc`` on Windows)."""
    env = os.environ.get("NETRC")
    candidates = [Path(env)] if env else [Path.home() / ".netrc", Path.home() / "_netrc"]
    for p in candidates:
        if p.is_file():
            return p
    return None


def gdal_env(
    *,
    retry: RetryPolicy | None = None,
    netrc: bool = True,
    netrc_file: str | os.PathLike[str] | None = None,
    cookie_file: str | os.PathLike[str] | None = None,
    timeout: float | None = 30,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str | int]:
    """GDAL configuration options for reading remote COGs robustly.

    - ``GDAL_HTTP_MAX_RETRY`` / ``GDAL_HTTP_RETRY_DELAY`` from ``retry`` (GDAL doubles the delay
      after each failed try), ``GDAL_HTTP_RETRY_CODES`` = 429 and 5xx (GDAL >= 3.10).
    - ``GDAL_HTTP_NETRC`` (+ ``GDAL_HTTP_NETRC_FILE`` when a file is found or given) and a cookie
      jar (``GDAL_HTTP_COOKIEFILE`` / ``GDAL_HTTP_COOKIEJAR``) for NASA Earthdata logins.
    - ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: no directory listing per open.
    - ``GDAL_CACHEMAX``: a fixed block cache of 256 MB unless the environment variable sets
      one, so memory does not depend on the machine's RAM.
    - timeouts, and ``GDAL_HTTP_HEADERS`` for extra headers.

    Use as ``with rasterio.Env(**gdal_env()): ...``. ``retry`` defaults to ``RetryPolicy()``
    (which honours the ``TERRASTILL_RETRY_*`` environment variables).
    """
    retry = retry if retry is not None else RetryPolicy()
    env: dict[str, str | int] = {
        "GDAL_HTTP_MAX_RETRY": str(max(0, retry.attempts - 1)),
        "GDAL_HTTP_RETRY_DELAY": f"{max(retry.base_delay, 0.001):g}",
        "GDAL_HTTP_RETRY_CODES": ",".join(str(c) for c in sorted(TRANSIENT_STATUS)),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }
    if "GDAL_CACHEMAX" not in os.environ:
        # decoded blocks kept in memory: GDAL's default is 5 % of RAM, which lets a long
        # prediction grow with its AOI on a large machine (rasterio takes bytes here)
        env["GDAL_CACHEMAX"] = DEFAULT_BLOCK_CACHE_MB * 2**20
    if timeout is not None:
        env["GDAL_HTTP_TIMEOUT"] = str(max(1, round(timeout)))
        env["GDAL_HTTP_CONNECTTIMEOUT"] = str(max(1, round(min(timeout, 10))))
    if netrc:
        env["GDAL_HTTP_NETRC"] = "YES"
        nf = Path(netrc_file).expanduser() if netrc_file else netrc_path()
        if nf is not None:
            env["GDAL_HTTP_NETRC_FILE"] = str(nf)
        jar = Path(cookie_file or COOKIE_FILE).expanduser()
        try:
            jar.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: go without a cookie jar
            pass
        else:
            env["GDAL_HTTP_COOKIEFILE"] = str(jar)
            env["GDAL_HTTP_COOKIEJAR"] = str(jar)
    else:
        env["GDAL_HTTP_NETRC"] = "NO"
    if headers:
        env["GDAL_HTTP_HEADERS"] = "\r\n".join(f"{k}: {v}" for k, v in headers.items())
    return env


def is_remote(href: str) -> bool:
    return href.startswith(("http://", "https://", "s3://", "gs://", "/vsi"))


def gdal_path(href: str) -> str:
    """The GDAL path for an href: ``/vsicurl/`` for http(s), ``/vsis3/`` for s3, else as is."""
    if href.startswith(("http://", "https://")):
        return f"/vsicurl/{href}"
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://") :]
    if href.startswith("gs://"):
        return "/vsigs/" + href[len("gs://") :]
    if href.startswith("file://"):
        return href[len("file://") :]
    return href


# GDAL/curl messages that mean "try again", not "this asset is bad".
_TRANSIENT = re.compile(
    r"HTTP response code: (408|425|429|5\d\d)|timed out|timeout|Connection (reset|refused|"
    r"closed)|Recv failure|transfer closed|Empty reply|Couldn't connect|Could not connect|"
    r"Failed to connect|SSL|Operation too slow|Send failure|partial file|"
    r"curl error|RemoteDisconnected",
    re.IGNORECASE,
)
# Answers that will not change on a retry.
_DEFINITIVE = re.compile(r"HTTP response code: (400|401|403|404|410)\b|No such file", re.IGNORECASE)


def error_text(exc: BaseException) -> str:
    """The messages of ``exc`` and its causes (rasterio hides GDAL's reason in the chain)."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    return " | ".join(" ".join(p.split()) for p in parts if p)


def is_transient_read_error(exc: BaseException, href: str | None = None) -> bool:
    """Whether a rasterio/GDAL error reading ``href`` is worth another try.

    For a remote asset every GDAL error except a definitive 4xx counts: GDAL reports a dropped
    or truncated HTTP answer as "not recognized as a supported file format" or as a TIFF tile
    read error, indistinguishable by message from a corrupt file, so a corrupt remote file costs
    ``attempts`` tries before it is given up. A local file is never retried.
    """
    text = error_text(exc)
    if href is not None:
        if not is_remote(href):
            return False
        return not _DEFINITIVE.search(text)
    return bool(_TRANSIENT.search(text))


def clear_cache(href: str) -> None:
    """Forget what GDAL's /vsicurl/ cached about ``href`` (size, blocks, 'does not exist').

    GDAL keeps the bytes of a truncated answer and the "not found" of a failed one; a retry
    without clearing would read the same bad bytes again. rasterio has no binding for
    ``VSICurlPartialClearCache``, so it is called through ctypes on rasterio's libgdal.
    """
    fn = _vsicurl_clear()
    if fn is not None:
        fn(gdal_path(href).encode())


_CLEAR: Any = False


def _vsicurl_clear() -> Any:
    global _CLEAR
    if _CLEAR is False:
        _CLEAR = None
        try:
            import ctypes

            import rasterio  # noqa: F401 - loads libgdal into the process

            with open("/proc/self/maps") as f:
                libs = sorted({ln.split()[-1] for ln in f if "libgdal" in ln and ".so" in ln})
            for lib in libs:
                handle = ctypes.CDLL(lib)
                if hasattr(handle, "VSICurlPartialClearCache"):
                    handle.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
                    handle.VSICurlPartialClearCache.restype = None
                    _CLEAR = handle.VSICurlPartialClearCache
                    break
        except (OSError, AttributeError) as exc:  # not Linux, or a GDAL without the symbol
            log.debug("VSICurlPartialClearCache unavailable: %s", exc)
    return _CLEAR


def call_with_retries(
    href: str,
    fn: Callable[[], T],
    *,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Run ``fn`` (which opens/reads ``href``) with retries suited to that asset.

    Remote hrefs: any rasterio/GDAL error but a definitive 4xx is retried, with GDAL's cache of
    the href cleared before each new try (so truncated bytes are fetched again). Local files:
    no retries. The final failure raises :class:`AssetReadError` naming ``href``, with
    ``transient`` set when the last error looked like a network problem or the tries failed in
    different ways (a corrupt file fails identically every time).
    """
    from rasterio.errors import RasterioError

    retry = retry if retry is not None else RetryPolicy()
    remote = is_remote(href)
    seen: set[str] = set()

    def once() -> T:
        try:
            return fn()
        except (RasterioError, OSError) as exc:
            if remote:
                seen.add(error_text(exc))
                clear_cache(href)
            raise exc

    kwargs: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
    try:
        return retry_call(
            once,
            what=href,
            is_transient=lambda e: (
                isinstance(e, (RasterioError, OSError)) and is_transient_read_error(e, href)
            ),
            policy=retry,
            **kwargs,
        )
    except (RasterioError, OSError) as exc:
        # A corrupt file fails the same way every time; a flaky network (truncated answers)
        # fails differently from try to try: then the asset is not bad, only unreachable now,
        # and a later resume should try it again instead of rejecting its group for good.
        transient = remote and (is_transient_read_error(exc) or len(seen) > 1)
        what = "unreachable after retries" if transient else "cannot read asset"
        err = AssetReadError(f"{href}: {what} ({_one_line(error_text(exc))})")
        err.transient = transient  # type: ignore[attr-defined]
        raise err from exc


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header_problem(ds: Any, expected: Mapping[str, Any] | None = None) -> str | None:
    """Why an opened dataset looks damaged, or ``None``.

    A truncated HTTP answer can make libtiff *ignore* GeoTIFF tags ("tag ignored") instead of
    failing: the dataset then opens without CRS or geotransform, or with another shape. Check
    every remote open with this and treat a problem as transient (clear the cache, reopen).
    ``expected`` may hold STAC ``proj:epsg`` / ``proj:shape`` / ``proj:transform`` (from the
    asset or its item) to compare with.
    """
    if ds.crs is None:
        return "no CRS in the header (truncated read?)"
    if ds.transform.is_identity:
        return "no geotransform in the header (truncated read?)"
    if expected:
        epsg = expected.get("proj:epsg")
        if epsg is not None and ds.crs.to_epsg() != int(epsg):
            return f"CRS EPSG:{ds.crs.to_epsg()} but the item says EPSG:{epsg}"
        shape = expected.get("proj:shape")
        if shape is not None and tuple(shape) != (ds.height, ds.width):
            return f"shape {(ds.height, ds.width)} but the item says {tuple(shape)}"
        tr = expected.get("proj:transform")
        if tr is not None and any(
            abs(a - b) > 1e-6 for a, b in zip(tuple(ds.transform)[:6], tr[:6], strict=False)
        ):
            return "geotransform differs from the item's proj:transform"
    return None

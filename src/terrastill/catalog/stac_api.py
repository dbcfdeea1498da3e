"""STAC-API catalogue backend (pystac-client), with retries, paging and optional signing.

Every HTTP request pystac-client makes (landing page, conformance, collections, each search
page) goes through :class:`RetryingStacApiIO`, which retries throttling (429), server errors
(5xx), timeouts, dropped connections and truncated bodies with exponential backoff and jitter
(:class:`terrastill.retry.RetryPolicy`), then raises one :class:`CatalogError` naming the URL.

Cloud-cover limits go to the server as a CQL2 ``filter`` when the API conforms to the filter
extension, else as a ``query`` (query extension), else they are applied here; in every case the
result is re-checked client-side with the same semantics as :class:`LocalCatalog` (an item
without ``eo:cloud_cover`` passes), so both backends return the same items for the same search.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import pystac

from terrastill.catalog.base import Search, sort_items
from terrastill.errors import BadInputError, CatalogError, NotFoundError
from terrastill.retry import RetryPolicy, is_transient_status, retry_call

log = logging.getLogger(__name__)

PLANETARY_COMPUTER_HOSTS = ("planetarycomputer.microsoft.com",)
FILTER_MODES = ("auto", "filter", "query", "client")


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    from pystac_client.exceptions import APIError

    if isinstance(exc, APIError):
        # No status: the request never got a complete answer (refused, reset, timed out,
        # truncated body). A status: retry only throttling / server trouble.
        return is_transient_status(_status(exc))
    return False


def _describe(exc: BaseException, limit: int = 300) -> str:
    status = _status(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"HTTP {status}: {text}" if status else text


def _make_io(
    policy: RetryPolicy,
    headers: Mapping[str, str] | None,
    timeout: float | None,
    sleep: Callable[[float], None],
) -> Any:
    from pystac_client.stac_api_io import StacApiIO

    class RetryingStacApiIO(StacApiIO):  # type: ignore[misc]
        """StacApiIO whose every request is retried by ``policy``; failures -> CatalogError."""

        def request(
            self,
            href: str,
            method: str | None = None,
            headers: dict[str, str] | None = None,
            parameters: dict[str, Any] | None = None,
        ) -> str:
            verb = (method or "GET").upper()
            parent = super().request

            def once() -> str:
                return parent(href, method=method, headers=headers, parameters=parameters)

            try:
                return retry_call(
                    once,
                    what=f"{verb} {href}",
                    is_transient=_is_transient,
                    policy=policy,
                    sleep=sleep,
                )
            except Exception as exc:
                from pystac_client.exceptions import APIError

                if not isinstance(exc, APIError):
                    raise
                if _is_transient(exc):
                    raise CatalogError(
                        f"{verb} {href}: STAC API request failed after {policy.attempts} "
                        f"attempt(s): {_describe(exc)}"
                    ) from exc
                raise CatalogError(
                    f"{verb} {href}: STAC API refused the request ({_describe(exc)})"
                ) from exc

    # max_retries=None: no second, hidden retry layer inside urllib3.
    return RetryingStacApiIO(headers=dict(headers or {}), timeout=timeout, max_retries=None)


def _planetary_computer_modifier(url: str) -> Callable[[Any], None]:
    try:
        import planetary_computer  # optional dependency
    except ImportError as exc:
        raise BadInputError(
            f"{url}: Planetary Computer assets must be signed, which needs the "
            "'planetary-computer' package: pip install planetary-computer "
            "(or pass sign=None to read unsigned hrefs)"
        ) from exc
    return planetary_computer.sign_inplace  # type: ignore[no-any-return]


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _rfc3339(dt: datetime) -> str:
    dt = _utc(dt)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def cloud_filter_cql2(max_cloud: float) -> dict[str, Any]:
    """CQL2-JSON: cloud cover at most ``max_cloud``, or not recorded (as LocalCatalog does)."""
    prop = {"property": "eo:cloud_cover"}
    return {
        "op": "or",
        "args": [
            {"op": "<=", "args": [prop, max_cloud]},
            {"op": "isNull", "args": [prop]},
        ],
    }


class StacApiCatalog:
    """Items from a STAC API (``/search``), with paging, retries, filters and optional signing.

    Parameters
    ----------
    url:
        The API's landing page, e.g. ``https://earth-search.aws.element84.com/v1``.
    headers:
        Extra HTTP headers for every API request (e.g. an API key).
    page_limit:
        Items per page asked of the server (``limit``); all pages are always fetched.
    retry:
        Retry policy for every API request (and, via :func:`terrastill.io_http.gdal_env`, for
        asset reads).
    sign:
        ``"auto"`` signs asset hrefs when the URL is Planetary Computer's;
        ``"planetary-computer"`` always signs; ``None`` never does.
    netrc:
        Use ``~/.netrc`` (or ``$NETRC``) for asset reads (NASA Earthdata); see :meth:`gdal_env`.
    timeout:
        Seconds per HTTP request (connect and read).
    filter_mode:
        ``"auto"`` (CQL2 filter if the API conforms, else query extension, else client side),
        or force one of ``"filter"``, ``"query"``, ``"client"``.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        page_limit: int = 100,
        retry: RetryPolicy | None = None,
        sign: str | None = "auto",
        netrc: bool = True,
        timeout: float | None = 30,
        filter_mode: str = "auto",
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not url.startswith(("http://", "https://")):
            raise BadInputError(f"{url}: a STAC API URL must start with http:// or https://")
        if page_limit < 1:
            raise BadInputError(f"page_limit must be >= 1, not {page_limit}")
        if filter_mode not in FILTER_MODES:
            raise BadInputError(f"filter_mode must be one of {FILTER_MODES}, not {filter_mode!r}")
        if sign not in ("auto", "planetary-computer", None):
            raise BadInputError(f"sign must be 'auto', 'planetary-computer' or None, not {sign!r}")
        retry = retry if retry is not None else RetryPolicy()
        self.url = url.rstrip("/")
        self.location = self.url
        self.page_limit = page_limit
        self.retry = retry
        self.netrc = netrc
        self.timeout = timeout
        host = urlparse(self.url).hostname or ""
        self.sign = (
            "planetary-computer"
            if sign == "planetary-computer"
            or (sign == "auto" and host.endswith(PLANETARY_COMPUTER_HOSTS))
            else None
        )
        modifier = _planetary_computer_modifier(self.url) if self.sign else None
        self._io = _make_io(retry, headers, timeout, sleep)
        self._client = self._open(modifier)
        self._collections: list[str] | None = None
        self.filter_mode = self._choose_filter_mode(filter_mode)

    # -- connection --------------------------------------------------------------------------

    def _open(self, modifier: Callable[[Any], None] | None) -> Any:
        from pystac_client import Client
        from pystac_client.errors import ClientTypeError

        try:
            return Client.open(self.url, stac_io=self._io, modifier=modifier)
        except CatalogError:
            raise
        except (ClientTypeError, pystac.STACError, ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"{self.url}: not a STAC API landing page ({exc})") from exc

    def _choose_filter_mode(self, wanted: str) -> str:
        if wanted != "auto":
            return wanted
        if self._client.conforms_to("FILTER"):
            return "filter"
        if self._client.conforms_to("QUERY"):
            return "query"
        return "client"

    # -- Catalog protocol --------------------------------------------------------------------

    def collection_ids(self) -> list[str]:
        if self._collections is None:
            try:
                ids = [c.id for c in self._client.get_collections()]
            except CatalogError:
                raise
            except pystac.STACError as exc:
                raise CatalogError(f"{self.url}/collections: unreadable ({exc})") from exc
            self._collections = sorted(set(ids))
        return list(self._collections)

    def check_collections(self, wanted: tuple[str, ...] | list[str]) -> None:
        """Raise :class:`NotFoundError` naming any collection in ``wanted`` the API lacks."""
        have = set(self.collection_ids())
        missing = [c for c in wanted if c not in have]
        if missing:
            raise NotFoundError(
                f"{self.url}: collection(s) not found: {', '.join(missing)} "
                f"(available: {', '.join(sorted(have)) or 'none'})"
            )

    def search(self, search: Search) -> list[pystac.Item]:
        if search.collections:
            self.check_collections(search.collections)
        start, end = _utc(search.start), _utc(search.end)
        kwargs: dict[str, Any] = {
            "bbox": list(search.bbox),
            "datetime": f"{_rfc3339(start)}/{_rfc3339(end)}",
            "limit": self.page_limit,
            "max_items": None,
        }
        if search.collections:
            kwargs["collections"] = list(search.collections)
        if search.max_cloud is not None:
            if self.filter_mode == "filter":
                kwargs["filter"] = cloud_filter_cql2(float(search.max_cloud))
                kwargs["filter_lang"] = "cql2-json"
            elif self.filter_mode == "query":
                kwargs["query"] = {"eo:cloud_cover": {"lte": float(search.max_cloud)}}
        try:
            result = self._client.search(**kwargs)
            found = list(result.items())
        except CatalogError:
            raise
        except (NotImplementedError, pystac.STACError, ValueError) as exc:
            raise CatalogError(f"{self.url}/search: {type(exc).__name__}: {exc}") from exc

        out: list[pystac.Item] = []
        seen: set[tuple[str | None, str]] = set()
        dropped = 0
        for it in found:
            key = (it.collection_id, it.id)
            if key in seen:
                continue
            seen.add(key)
            if not _matches(it, search, start, end):
                dropped += 1
                continue
            out.append(_absolute_hrefs(it))
        if dropped:
            log.info("%s: %d item(s) outside the search dropped client-side", self.url, dropped)
        return sort_items(out)

    # -- asset access ------------------------------------------------------------------------

    def gdal_env(self) -> dict[str, str]:
        """GDAL config options for reading this catalogue's assets (retries, .netrc)."""
        from terrastill.io_http import gdal_env

        return gdal_env(retry=self.retry, netrc=self.netrc, timeout=self.timeout)

    def __repr__(self) -> str:
        return f"StacApiCatalog({self.url!r}, filter_mode={self.filter_mode!r})"


def _matches(item: pystac.Item, search: Search, start: datetime, end: datetime) -> bool:
    """The same acceptance test as LocalCatalog.search (bbox is left to the server)."""
    if search.collections and item.collection_id not in search.collections:
        return False
    if item.datetime is None or not (start <= _utc(item.datetime) <= end):
        return False
    cc = item.properties.get("eo:cloud_cover")
    return not (search.max_cloud is not None and cc is not None and cc > search.max_cloud)


def _absolute_hrefs(item: pystac.Item) -> pystac.Item:
    for asset in item.assets.values():
        if "://" not in asset.href and not asset.href.startswith("/"):
            absolute = asset.get_absolute_href()
            if absolute:
                asset.href = absolute
    return item

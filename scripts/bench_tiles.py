#!/usr/bin/env python
"""Load test of the tile endpoint of a running ``terrastill serve`` on loopback.

Fires concurrent requests for the tiles covering a finished job at every zoom level of
``--zooms`` (default 0-16, both layers), bounded in count and in time, and reports tiles/s,
p50/p95/max latency overall and per zoom, and errors. Tiles below the layer's TileJSON minzoom
must be refused quickly (404); every other answer must be a PNG. Refuses any host that is not a
loopback address.

    terrastill serve --models demo-out/models --data demo-out/serve &
    python scripts/bench_tiles.py --url http://127.0.0.1:8000 --job <id> \\
        --requests 2000 --concurrency 16 --max-seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit

import httpx
import morecantile


def loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or ""
    addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        sys.exit(f"refusing {url}: this benchmark only targets loopback addresses")


def zoom_range(text: str) -> list[int]:
    """'0-16' or '3,5,7' as a list of zoom levels."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-", 1))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def tile_urls(job_id: str, tj: dict, layers: list[str], zooms: list[int], cap: int) -> list[str]:
    tms = morecantile.tms.get("WebMercatorQuad")
    urls = []
    for z in zooms:
        for t in tms.tiles(*tj["bounds"], zooms=[z]):
            for layer in layers:
                urls.append(f"/api/jobs/{job_id}/tiles/{z}/{t.x}/{t.y}.png?layer={layer}")
                if len(urls) >= cap:
                    return urls
    return urls


async def run(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=30, limits=limits
    ) as c:
        r = await c.get(f"/api/jobs/{args.job}/tilejson.json", params={"layer": args.layers[0]})
        r.raise_for_status()
        tj = r.json()
        zooms = list(args.zooms)
        # the same number of tiles from each zoom level (the low levels have only a few)
        per = max(1, args.requests // (len(zooms) * len(args.layers)))
        urls = [u for z in zooms for u in tile_urls(args.job, tj, args.layers, [z], cap=per)]
        urls = urls[:args.requests]
        if not urls:
            sys.exit("the job's bounds cover no tile")
        latencies: list[float] = []
        by_zoom: dict[int, list[float]] = {}
        statuses: dict[str, int] = {}
        errors = 0
        sent = 0
        deadline = time.monotonic() + args.max_seconds

        async def worker() -> None:
            nonlocal errors, sent
            while sent < args.requests and time.monotonic() < deadline:
                url = urls[sent % len(urls)]
                sent += 1
                t0 = time.perf_counter()
                z = int(url.split("/tiles/")[1].split("/")[0])
                try:
                    resp = await c.get(url)
                    png = resp.status_code == 200 and resp.content[:8] == b"\x89PNG\r\n\x1a\n"
                    refused = resp.status_code == 404 and z < tj["minzoom"]
                    ok = png or refused
                    key = str(resp.status_code)
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                by_zoom.setdefault(z, []).append(latencies[-1])
                statuses[key] = statuses.get(key, 0) + 1
                errors += 0 if ok else 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t_start

    lat = sorted(latencies)
    q = lambda p: lat[min(len(lat) - 1, math.ceil(p * len(lat)) - 1)] * 1000  # noqa: E731
    return {
        "requests": len(lat),
        "distinct_tiles": len(set(urls)),
        "zooms": zooms,
        "layers": args.layers,
        "concurrency": args.concurrency,
        "seconds": round(wall, 3),
        "tiles_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(q(0.50), 1),
        "p95_ms": round(q(0.95), 1),
        "max_ms": round(lat[-1] * 1000, 1),
        "max_ms_by_zoom": {z: round(max(v) * 1000, 1) for z, v in sorted(by_zoom.items())},
        "minzoom": tj["minzoom"],
        "mean_ms": round(statistics.fmean(lat) * 1000, 1),
        "errors": errors,
        "statuses": statuses,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback)")
    p.add_argument("--job", required=True, help="id of a finished job")
    p.add_argument("--token", default=os.environ.get("TERRASTILL_TOKEN"), help="bearer token")
    p.add_argument(
        "--layers", nargs="+", default=["classes", "truecolor"], choices=["classes", "truecolor"]
    )
    p.add_argument("--requests", type=int, default=1000, help="most requests sent (≤ 100000)")
    p.add_argument("--zooms", type=zoom_range, default=range(0, 17),
                   help="zoom levels, e.g. 0-16 or 12,14 (default 0-16)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (≤ 256)")
    p.add_argument("--max-seconds", type=float, default=60, help="stop after this long (≤ 600)")
    p.add_argument("--json", dest="json_out", help="also write the report to this file")
    args = p.parse_args()
    args.requests = max(1, min(args.requests, 100_000))
    args.concurrency = max(1, min(args.concurrency, 256))
    args.max_seconds = max(1.0, min(args.max_seconds, 600.0))
    loopback_only(args.url)
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()

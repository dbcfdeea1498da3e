#!/usr/bin/env python
"""Serve a local STAC ItemCollection through a real STAC API (stac-fastapi-pgstac) on loopback.

    .venv/bin/python scripts/start_stac_server.py demo-out/world/catalog.json
    .venv/bin/python scripts/start_stac_server.py catalog.json --http-assets   # assets via HTTP
    .venv/bin/python scripts/start_stac_server.py --smoke                       # start, time, stop

Creates a throwaway PostgreSQL cluster (initdb in a temp folder; as the ``postgres`` user when
run as root), installs pgstac with pypgstac, loads the collections (``collections/*.json``
beside the catalogue, else minimal ones derived from the items) and items, starts the API, and
prints its URL; Ctrl-C tears everything down. Needs ``scripts/setup_pgstac.sh`` first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from stac_server import (
    PgStacService,
    StaticFileServer,
    find_pg_bin,
    load_item_collection,
    make_tiny_catalog,
    rehref,
    strip_links,
    world_collections,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("catalog", nargs="?", help="ItemCollection JSON (e.g. WORLD/catalog.json)")
    ap.add_argument(
        "--http-assets", action="store_true", help="serve asset files over HTTP and load HTTP hrefs"
    )
    ap.add_argument("--smoke", action="store_true", help="start with a tiny catalogue, time, stop")
    args = ap.parse_args(argv)
    pg_bin = find_pg_bin()
    if pg_bin is None:
        print("PostgreSQL not installed: run scripts/setup_pgstac.sh", file=sys.stderr)
        return 2
    tmp = None
    if args.smoke or not args.catalog:
        tmp = tempfile.TemporaryDirectory(prefix="terrastill-smoke-")
        catalog = make_tiny_catalog(tmp.name)
    else:
        catalog = Path(args.catalog).resolve()
    items = strip_links(load_item_collection(catalog))
    files = None
    if args.http_assets:
        files = StaticFileServer(catalog.parent).start()
        root = str(catalog.parent)
        items = rehref(items, lambda h: files.url + h[len(root) :] if h.startswith(root) else h)
    t0 = time.monotonic()
    service = PgStacService(pg_bin).start()
    url = service.serve("catalog", world_collections(catalog.parent, items), items)
    took = time.monotonic() - t0
    try:
        print(
            f"STAC API: {url}  ({len(items)} items, started in {took:.1f}s; "
            f"cluster {service.timings['cluster']:.1f}s, "
            f"migrate {service.timings['migrate']:.1f}s)",
            flush=True,
        )
        if files is not None:
            print(f"assets:   {files.url}/", flush=True)
        if args.smoke:
            import urllib.request

            with urllib.request.urlopen(f"{url}/search?limit=100") as r:
                n = len(json.load(r)["features"])
            print(f"smoke: /search returned {n} item(s)")
            return 0 if n else 1
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        service.stop()
        if files is not None:
            files.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())

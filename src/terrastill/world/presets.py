"""Named world configurations: the demo, and worlds shaped like production catalogues."""

from __future__ import annotations

from typing import Any

from terrastill.errors import BadInputError

# Each preset is a set of WorldConfig fields; options given on the command line override them.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    # One tile the size of a real HLS granule (3,660 px of 30 m = 109.8 km), one UTM zone,
    # scene COGs tiled 512 px, deflate, with overviews, one file per band as HLS ships them;
    # a month of acquisitions keeps generation to minutes. For read/predict benchmarks.
    "hls-production": {"source": "hls", "zones": 1, "tiles_x": 1, "tiles_y": 1,
                       "tile_size": 3660, "overlap": 0, "block_size": 512,
                       "start": "2024-06-01", "end": "2024-06-30", "revisit": 5,
                       "observations": 200},
}


def preset(name: str) -> dict[str, Any]:
    """The WorldConfig fields of preset ``name`` (a one-line error for an unknown one)."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise BadInputError(f"--preset {name!r}: expected one of {', '.join(PRESETS)}") from None

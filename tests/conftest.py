"""Shared fixtures: a tiny demo world built by the world generator (the fixture generator)."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The team's small real files (../shared/data/real beside the project root)."""
    if not REAL.exists():
        pytest.skip(f"real sample data not found at {REAL}")
    return REAL


def small_world_config(**overrides):
    from terrastill.world.config import WorldConfig

    base = dict(seed=3, zones=2, tiles_x=2, tiles_y=1, tile_size=64, start="2024-05-01",
                end="2024-07-15", revisit=3, flood_date="2024-06-20", observations=80)
    base.update(overrides)
    return WorldConfig(**base)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> dict:
    """A two-zone, two-tile-per-zone world of 64 px tiles over ten weeks (built once)."""
    from terrastill.world.build import build_world, load_manifest

    out = tmp_path_factory.mktemp("world")
    build_world(out, small_world_config(bad_rows=True))
    return load_manifest(out)


@pytest.fixture(scope="session")
def flood_dataset(small_world, tmp_path_factory) -> Path:
    """Chips of the small world's flood task (16 px, 2 steps), made once."""
    from terrastill.data.build import ChipJob, make_chips
    from terrastill.data.chips import ReadOptions
    from terrastill.data.observations import ObservationOptions
    from terrastill.data.temporal import TemporalOptions

    out = tmp_path_factory.mktemp("flood-chips") / "ds"
    job = ChipJob(read=ReadOptions(temporal=TemporalOptions(2, 9, 4, 60)), chip_size=16,
                  min_valid=0.3, label_window=3, split_block=1000)
    make_chips(small_world["tasks"]["flood"]["observations"], out, small_world["catalog"], job,
               ObservationOptions(classes=["land", "water"]))
    return out


@pytest.fixture(scope="session")
def flood_model(flood_dataset, tmp_path_factory) -> Path:
    """A tiny flood teacher trained for a few epochs on ``flood_dataset``."""
    from terrastill.training.train import TrainOptions, fit

    out = tmp_path_factory.mktemp("flood-model")
    return fit(flood_dataset, out, TrainOptions(model="tiny", epochs=12, seed=0, progress=False))


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> dict:
    """``terrastill demo --quick`` run once: its folder, summary and console output."""
    import json

    from typer.testing import CliRunner

    from terrastill.cli import app

    out = tmp_path_factory.mktemp("quick-demo") / "demo"
    res = CliRunner().invoke(app, ["demo", str(out), "--quick"])
    assert res.exit_code == 0, res.output
    return {"out": out, "summary": json.loads((out / "summary.json").read_text()),
            "output": res.output}

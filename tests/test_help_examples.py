"""Every command's --help example works against the demo's own files: paths under
demo-out/, boxes inside the default demo world and dates within its season."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from typer.testing import CliRunner

from terrastill.cli import COMMANDS, app
from terrastill.world.config import WorldConfig
from terrastill.world.grid import layout, region_bbox

runner = CliRunner()
NAMES = [name for name, _module, _func in COMMANDS]


def example(name: str) -> list[list[str]]:
    """The example commands of ``name --help``: from a line naming terrastill to a blank."""
    res = runner.invoke(app, [name, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    text = re.sub(r"[│╭╮╰╯─]", " ", res.output)
    assert "Example" in text, f"{name}: no example in --help"
    lines = text.split("Example", 1)[1].split("Options", 1)[0].splitlines()
    commands: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        words = line.replace("Example:", " ").split()
        if "terrastill" in words:
            current = []
            commands.append(current)
            words = words[words.index("terrastill") + 1:]
        elif not words:
            current = None
        if current is not None:
            current.extend(words)
    assert commands and all(c and c[0] == name for c in commands), (name, commands)
    return commands


@pytest.mark.parametrize("name", NAMES)
def test_help_examples_use_the_demos_files(name):
    config = WorldConfig()
    minx, miny, maxx, maxy = region_bbox(layout(config))
    for args in example(name):
        for i, word in enumerate(args):
            is_path = "/" in word and word != "/" and not any(c in word for c in ",:{")
            if is_path:
                assert word.startswith("demo-out/"), f"{name}: {word} is not a demo file"
            if word == "--bbox":
                x0, y0, x1, y1 = (float(v) for v in args[i + 1:i + 5])
                assert minx <= x0 < x1 <= maxx and miny <= y0 < y1 <= maxy, (name, args)
            if word in ("--date", "--start", "--end"):
                day = dt.date.fromisoformat(args[i + 1])
                assert config.start <= day <= config.end, (name, word, day)

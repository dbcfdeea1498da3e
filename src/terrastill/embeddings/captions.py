"""Class captions for text alignment: instruction templates × short class descriptions.

Each class gets several captions: every template filled with the class's readable name
(``HerbaceousVegetation`` → "herbaceous vegetation") and its short description, behind an
instruction prefix (SATtxt's instruction-augmented text side). Defaults are Python data here;
a YAML file can replace the templates and instruction and add or override descriptions::

    instruction: "Represent this description of a satellite image for retrieval: "
    templates:
      - "a Sentinel-2 satellite image of {name}."
      - "{description}, seen from space."
    descriptions:
      Forest: dense tree canopy with dark green texture
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrastill.errors import BadInputError

DEFAULT_INSTRUCTION = "Represent this description of a satellite image for retrieval: "
DEFAULT_TEMPLATES = (
    "a satellite image of {name}.",
    "a Sentinel-2 image showing {name}: {description}.",
    "an aerial view of {description}.",
    "a remote sensing photo of an area of {name}.",
    "land cover: {name}, {description}.",
)
# Short descriptions of the EuroSAT classes (and a few common land-cover names).
DEFAULT_DESCRIPTIONS = {
    "annual crop": "cultivated fields of seasonal crops in regular rectangular parcels",
    "forest": "dense tree canopy covering the land",
    "herbaceous vegetation": "natural grass and low herbaceous plants without trees",
    "highway": "a wide paved road crossing the landscape",
    "industrial": "large industrial buildings, warehouses and paved yards",
    "pasture": "grassland used for grazing livestock",
    "permanent crop": "orchards and vineyards planted in rows",
    "residential": "houses and streets of a town or suburb",
    "river": "a river channel with water flowing between its banks",
    "sea lake": "a large body of open water, sea or lake",
    "water": "open water surface",
    "land": "dry land",
    "cropland": "cultivated agricultural fields",
    "urban": "built-up area with buildings and roads",
    "bare": "bare soil or rock without vegetation",
    "grassland": "open grass cover",
    "wetland": "marsh and water-logged vegetation",
}


def readable(name: str) -> str:
    """``HerbaceousVegetation`` / ``sea_lake`` → ``herbaceous vegetation`` / ``sea lake``."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name))
    return re.sub(r"[\s_\-]+", " ", text).strip().lower()


def parse_classes(text: str | Sequence[str]) -> list[str]:
    """``--classes "a,b,c"``: names in order; empty names and duplicates are refused."""
    names = [p.strip() for p in text.split(",")] if isinstance(text, str) else \
        [str(p).strip() for p in text]
    if not names or any(not n for n in names):
        raise BadInputError(f"--classes {text!r}: empty class name")
    seen: dict[str, str] = {}
    for n in names:
        key = readable(n)
        if key in seen:
            raise BadInputError(f"--classes {text!r}: class {n!r} given twice"
                                + (f" (as {seen[key]!r})" if seen[key] != n else ""))
        seen[key] = n
    if len(names) < 2:
        raise BadInputError(f"--classes {text!r}: at least two classes are needed")
    return names


@dataclass
class CaptionSpec:
    """Instruction, templates and per-class descriptions (keys: readable class names)."""

    instruction: str = DEFAULT_INSTRUCTION
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    descriptions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DESCRIPTIONS))

    def description(self, name: str) -> str:
        return self.descriptions.get(readable(name)) or readable(name)

    def captions(self, name: str) -> list[str]:
        """Every template filled for class ``name``, behind the instruction."""
        fields = {"name": readable(name), "description": self.description(name)}
        return [self.instruction + t.format(**fields) for t in self.templates]

    def query(self, text: str) -> str:
        """A free-text query as the text encoder sees it (same instruction as captions)."""
        return self.instruction + str(text).strip()

    def class_captions(self, classes: Sequence[str]) -> dict[str, list[str]]:
        return {c: self.captions(c) for c in classes}

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "templates": list(self.templates),
                "descriptions": dict(self.descriptions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptionSpec:
        return cls(str(data.get("instruction", DEFAULT_INSTRUCTION)),
                   list(data.get("templates") or DEFAULT_TEMPLATES),
                   {readable(k): str(v) for k, v in (data.get("descriptions") or {}).items()})


def _check_templates(templates: Any, where: str) -> list[str]:
    if not isinstance(templates, list) or not templates or \
            not all(isinstance(t, str) and t.strip() for t in templates):
        raise BadInputError(f"{where}: 'templates' must be a non-empty list of strings")
    for t in templates:
        try:
            t.format(name="x", description="y")
        except (KeyError, IndexError, ValueError) as exc:
            raise BadInputError(f"{where}: template {t!r} may use only {{name}} and "
                                f"{{description}} ({exc})") from None
    return [str(t) for t in templates]


def load_caption_spec(path: str | Path | None, base: CaptionSpec | None = None) -> CaptionSpec:
    """``base`` (default: the built-in spec) updated from a YAML file (see module doc)."""
    import yaml

    spec = CaptionSpec(**{**(base or CaptionSpec()).__dict__})
    spec.descriptions = dict(spec.descriptions)
    if path is None:
        return spec
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BadInputError(f"{p}: cannot read captions YAML ({exc})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{p}: expected a mapping with templates / descriptions")
    unknown = sorted(set(data) - {"instruction", "templates", "descriptions"})
    if unknown:
        raise BadInputError(f"{p}: unknown key {unknown[0]!r} (expected instruction, "
                            "templates, descriptions)")
    if "templates" in data:
        spec.templates = _check_templates(data["templates"], str(p))
    if "instruction" in data:
        spec.instruction = str(data["instruction"] or "")
    desc = data.get("descriptions") or {}
    if not isinstance(desc, dict):
        raise BadInputError(f"{p}: 'descriptions' must map class names to text")
    for k, v in desc.items():
        if not str(k).strip() or not isinstance(v, str) or not v.strip():
            raise BadInputError(f"{p}: description of {k!r} must be non-empty text")
        spec.descriptions[readable(k)] = v.strip()
    return spec

"""Size a student's head with its depth, so that the head does not dominate a small student."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from terrastill.errors import BadInputError


def _example(model: nn.Module) -> torch.Tensor:
    cfg = model.encoder.config
    return torch.zeros(1, int(cfg["in_chans"]), int(cfg["num_frames"]), int(cfg["img_size"]),
                       int(cfg["img_size"]))


def split_macs(model: nn.Module) -> tuple[int, int]:
    """(encoder MACs, head MACs) of one chip (attention counted)."""
    from terrastill.models.encoder import count_macs

    x = _example(model)
    total = count_macs(model, x)
    enc = count_macs(model.encoder, x)
    return enc, total - enc


def auto_head_channels(teacher: nn.Module, depth: int, num_outputs: int) -> dict[str, Any]:
    """The widest head (channels halved from the teacher's) whose MACs stay within the
    student's share of the teacher's head cost: head_t · encoder_s / encoder_t.

    Returns the chosen channels with the figures behind the choice. Never narrower than the
    number of outputs (classes) nor than 8."""
    from terrastill.training.distill import make_student

    enc_t, head_t = split_macs(teacher)
    base = int(teacher.arch["head"].get("channels", 0) or 0)
    if base <= 0:  # a head without a width to scale (e.g. a linear classifier): keep it
        return {"channels": None, "reason": "the teacher's head has no channel width"}
    floor = max(8, int(num_outputs))
    cands = []
    c = base
    while c >= floor:
        cands.append(c)
        c //= 2
    if not cands:
        cands = [base]
    enc_s = None
    chosen = None
    rows = []
    for c in cands:  # widest first
        student = make_student(teacher, depth, {"channels": c, **_min_channels(teacher, c)})
        enc, head = split_macs(student)
        enc_s = enc
        budget = head_t * enc / max(enc_t, 1)
        rows.append({"channels": c, "head_macs": head})
        if head <= budget:
            chosen = c
            break
    if chosen is None:
        chosen = cands[-1]
    return {"channels": chosen, "teacher_channels": base, "teacher_head_macs": head_t,
            "teacher_encoder_macs": enc_t, "student_encoder_macs": enc_s,
            "head_budget_macs": int(head_t * (enc_s or 0) / max(enc_t, 1)),
            "tried": rows}


def _min_channels(teacher: nn.Module, channels: int) -> dict[str, int]:
    """Keep the head's narrowest stage no wider than the head itself."""
    lo = teacher.arch["head"].get("min_channels")
    return {"min_channels": min(int(lo), channels)} if lo else {}


def resolve_head(teacher: nn.Module, depth: int, head: dict[str, Any] | None,
                 num_outputs: int) -> dict[str, Any] | None:
    """Head overrides for a ``depth``-block student: ``{"channels": "auto"}`` becomes a width
    from :func:`auto_head_channels`; an explicit width is checked against the outputs."""
    if not head:
        return None
    out = dict(head)
    ch = out.get("channels")
    if ch == "auto":
        sized = auto_head_channels(teacher, depth, num_outputs)
        if sized["channels"] is None:
            out.pop("channels")
        else:
            out["channels"] = int(sized["channels"])
            out.update(_min_channels(teacher, out["channels"]))
    elif ch is not None:
        if int(ch) < num_outputs:
            raise BadInputError(f"--head-channels {ch}: fewer than the {num_outputs} "
                                "classes the head must output; use at least that many or auto")
        out["channels"] = int(ch)
        out.update(_min_channels(teacher, out["channels"]))
    return out or None


def parse_head_channels(value: str | None) -> int | str | None:
    """``--head-channels``: a positive width, ``auto``, or ``teacher``/nothing (None: keep the
    teacher's head)."""
    if value is None or value.strip().lower() in ("", "teacher"):
        return None
    if value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise BadInputError(f"--head-channels {value!r}: a number of channels, 'auto' or "
                            "'teacher'") from None
    if n < 1:
        raise BadInputError(f"--head-channels {n}: must be at least 1")
    return n

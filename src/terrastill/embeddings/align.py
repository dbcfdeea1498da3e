"""Text alignment (SATtxt stage 2): the student's pooled embedding → a projection head, trained
with a symmetric multi-positive InfoNCE (learnable temperature) against frozen caption
embeddings.

The student and the text encoder stay frozen; only the head and the temperature learn. Every
class has several captions (:mod:`terrastill.embeddings.captions`): image→text treats all of its
class's captions as positives among every caption; text→image treats every image of the
caption's class in the batch as a positive.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from terrastill.embeddings.captions import CaptionSpec, readable
from terrastill.embeddings.vlm import ProjectionHead
from terrastill.errors import BadInputError


@dataclass
class AlignOptions:
    """Head and training settings of :func:`fit_alignment` (the CLI flags map 1:1)."""

    head: str = "linear"
    hidden: int = 256
    epochs: int = 300
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-2
    temperature: float = 0.07
    seed: int = 0


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −log(Σ_pos softmax(row)); rows without a positive are skipped."""
    has = positives.any(1)
    if not bool(has.any()):
        return logits.sum() * 0.0
    lse_all = torch.logsumexp(logits[has], 1)
    lse_pos = torch.logsumexp(logits[has].masked_fill(~positives[has], float("-inf")), 1)
    return (lse_all - lse_pos).mean()


@dataclass
class Alignment:
    """A fitted head and what it was fitted on."""

    head: ProjectionHead
    logit_scale: float
    classes: list[str]
    class_captions: dict[str, list[str]]
    text_dim: int
    training: dict[str, Any]


def fit_alignment(vectors: np.ndarray, labels: Sequence[str], text_encoder: Any,
                  spec: CaptionSpec, options: AlignOptions | None = None,
                  classes: Sequence[str] | None = None) -> Alignment:
    """Fit the head on rows whose label is in ``classes`` (default: every label present)."""
    opt = options or AlignOptions()
    if opt.epochs < 1 or opt.batch_size < 1 or opt.temperature <= 0:
        raise BadInputError("--epochs, --batch-size and --temperature must be positive")
    labels = [None if v is None else str(v) for v in labels]
    present = sorted({v for v in labels if v is not None})
    wanted = list(classes) if classes is not None else present
    key = {readable(c): c for c in wanted}
    row_class = [key.get(readable(v)) if v is not None else None for v in labels]
    keep = np.array([c is not None for c in row_class])
    used = sorted({c for c in row_class if c is not None}, key=wanted.index)
    if len(used) < 2:
        raise BadInputError(f"alignment needs labelled rows of at least two classes; found "
                            f"{len(used)} among {len(labels)} rows (classes: "
                            f"{', '.join(wanted) or 'none'})")
    absent = [c for c in wanted if c not in used]
    if absent:
        raise BadInputError(f"class {absent[0]!r}: no labelled row to align on")
    x = torch.as_tensor(np.asarray(vectors, np.float32)[keep])
    y = torch.as_tensor([used.index(c) for c in row_class if c is not None])
    captions = spec.class_captions(used)
    flat = [c for k in used for c in captions[k]]
    cap_cls = torch.as_tensor([i for i, k in enumerate(used) for _ in captions[k]])
    t_emb = torch.as_tensor(text_encoder.encode(flat))

    torch.manual_seed(opt.seed)
    head = ProjectionHead(x.shape[1], t_emb.shape[1], opt.head, opt.hidden)
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(x.shape[1]))
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / opt.temperature)))
    optim = torch.optim.AdamW([{"params": head.parameters()},
                               {"params": [logit_scale], "weight_decay": 0.0}],
                              lr=opt.lr, weight_decay=opt.weight_decay)
    gen = torch.Generator().manual_seed(opt.seed)
    n = len(x)
    bs = min(opt.batch_size, n)
    curve = []
    t0 = time.perf_counter()
    for _epoch in range(int(opt.epochs)):
        order = torch.randperm(n, generator=gen)
        losses = []
        for s in range(0, n - bs + 1, bs):
            idx = order[s:s + bs]
            z = head(x[idx])
            scale = logit_scale.clamp(max=math.log(100.0)).exp()
            logits = scale * z @ t_emb.T  # (B, captions)
            pos = y[idx][:, None] == cap_cls[None, :]
            loss = 0.5 * (multi_positive_nce(logits, pos) + multi_positive_nce(logits.T, pos.T))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
        curve.append(round(float(np.mean(losses)), 6))
    head.eval()
    scale_final = float(logit_scale.detach().clamp(max=math.log(100.0)))
    with torch.no_grad():
        z = head(x)
        protos = torch.stack([torch.nn.functional.normalize(t_emb[cap_cls == k].mean(0), dim=0)
                              for k in range(len(used))])
        train_acc = float(((z @ protos.T).argmax(1) == y).float().mean())
    training = {"objective": "multi-positive symmetric InfoNCE", "rows": n,
                "classes": used, "captions_per_class": len(spec.templates),
                "loss_curve": curve[:: max(1, len(curve) // 50)] + curve[-1:],
                "final_loss": curve[-1], "train_zero_shot_accuracy": round(train_acc, 4),
                "temperature": round(math.exp(-scale_final), 5),
                "seconds": round(time.perf_counter() - t0, 2),
                "options": dataclasses.asdict(opt)}
    return Alignment(head, scale_final, used,
                     captions, int(t_emb.shape[1]), training)


def vlm_payload(card: dict[str, Any], state: dict[str, torch.Tensor], alignment: Alignment,
                text_encoder: Any, spec: CaptionSpec, extra: dict[str, Any] | None = None,
                student_model: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`terrastill.embeddings.vlm.save_vlm` writes."""
    from terrastill.training.train import plain

    enc = getattr(text_encoder, "encoder", text_encoder)
    return {
        "student": {"card": plain(card), "state_dict": state,
                    "model": plain(student_model or {"name": card.get("name")})},
        "head": {"config": dict(alignment.head.config),
                 "state_dict": {k: v.detach().cpu().clone()
                                for k, v in alignment.head.state_dict().items()}},
        "logit_scale": float(alignment.logit_scale),
        "text": {"encoder": text_encoder.name, "version": getattr(enc, "version", ""),
                 "pooling": "mean-tokens", "dim": int(alignment.text_dim)},
        "captions": {"spec": spec.to_dict(), "classes": list(alignment.classes),
                     "class_captions": alignment.class_captions},
        "training": plain({**alignment.training, **(extra or {})}),
    }

"""Rename published checkpoints' tensors to timm's ViT keys.

Hand-written because the Hugging Face *transformers* layouts (``ViTModel``, ``Dinov2Model``)
and CONCH's open_clip checkpoint name the same tensors differently from timm, and
``transformers``/``open_clip`` are heavy dependencies this library does not otherwise need.
The mapping is pinned in ``tests/test_foundation.py`` by running a timm ViT on tensors
written out in each layout.

Layouts: ``timm`` (as is), ``conch`` (the ``visual.trunk.`` part; its pooler and projection
load through :meth:`models.foundation.ConchVisionTower.head_state`), ``hf-vit`` (ViTModel:
Phikon) and ``hf-dinov2`` (Dinov2Model, with or without registers, GELU or SwiGLU MLP:
Phikon-v2, Hibou, Midnight).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

_HF_BLOCK = {
    "norm1": "norm1",
    "layernorm_before": "norm1",
    "norm2": "norm2",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_BLOCK_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def to_timm_keys(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """``state`` renamed from ``layout`` to timm's VisionTransformer keys (see the module
    docstring); tensors the features do not use (pooler, mask token, text tower) dropped."""
    if layout == "timm":
        return dict(state)
    if layout == "conch":
        prefix = "visual.trunk."
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if layout in ("hf-vit", "hf-dinov2"):
        return _from_hf(state)
    raise ValueError(f"unknown checkpoint layout {layout!r}; use timm, conch, hf-vit or hf-dinov2")


def _from_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {_strip_model_prefix(k): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            continue  # pooler, mask token: not part of the features
        index, inner, kind = int(match.group(1)), match.group(2), match.group(3)
        part = inner.removeprefix("attention.attention.")
        if part in ("query", "key", "value"):
            qkv.setdefault((index, kind), {})[part] = value
        elif kind == "lambda1" and f"{inner}.lambda1" in _HF_BLOCK:
            out[f"blocks.{index}.{_HF_BLOCK[inner + '.lambda1']}"] = value
        elif inner in _HF_BLOCK:
            out[f"blocks.{index}.{_HF_BLOCK[inner]}.{kind}"] = value
    for (index, kind), parts in qkv.items():
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return out


def _strip_model_prefix(key: str) -> str:
    for prefix in ("vit.", "dinov2.", "model.", "backbone."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def fit_position_embedding(state: dict[str, torch.Tensor], vit: nn.Module) -> None:
    """Make ``state``'s ``pos_embed`` fit ``vit`` in place: move the class token's position
    into ``cls_token`` when ``vit`` adds no position to prefix tokens (timm's
    ``no_embed_class``: the DINOv2-with-registers models), and resample the patch grid
    (bicubic, timm's :func:`resample_abs_pos_embed`) when the checkpoint was saved for another
    input size (DINOv2's 518 px)."""
    from timm.layers import resample_abs_pos_embed

    if "pos_embed" not in state or not hasattr(vit, "pos_embed"):
        return
    pos = state["pos_embed"]
    target = vit.pos_embed.shape
    no_embed_class = bool(getattr(vit, "no_embed_class", False))
    prefix = 0 if no_embed_class else 1
    if no_embed_class and _is_square(pos.shape[1] - 1) and "cls_token" in state:
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        pos = pos[:, 1:]
    if pos.shape[1] != target[1]:
        grid = vit.patch_embed.grid_size
        pos = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)
    state["pos_embed"] = pos


def _is_square(n: int) -> bool:
    root = int(round(n**0.5))
    return root * root == n

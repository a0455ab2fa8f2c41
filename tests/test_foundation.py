"""Foundation-model presets: architecture widths, preprocessing, checkpoint layouts, licences."""

import dataclasses
import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

from models.encoders import RANDOM_WEIGHTS, Encoder, _preset_encoder, load_encoder
from models.errors import HubUnavailableError
from models.foundation import (
    PRESETS,
    ClsMeanPool,
    ConchVisionTower,
    FoundationPreset,
    encoder_cards,
)
from models.foundation_keys import fit_position_embedding, to_timm_keys
from wsi.cli import main

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# name: (width, input px, (mean, std), crop fraction, non-commercial), from the model cards
DOCUMENTED = {
    "uni": (1024, 224, IMAGENET, 1.0, True),
    "uni2_h": (1536, 224, IMAGENET, 1.0, True),
    "virchow": (2560, 224, IMAGENET, 1.0, True),
    "virchow2": (2560, 224, IMAGENET, 1.0, True),
    "h_optimus_0": (1536, 224, HOPT, 1.0, False),
    "h_optimus_1": (1536, 224, HOPT, 1.0, True),
    "phikon": (768, 224, IMAGENET, 1.0, True),
    "phikon_v2": (1024, 224, IMAGENET, 1.0, True),
    "prov_gigapath": (1536, 224, IMAGENET, 224 / 256, True),
    "conch_v1": (512, 448, CLIP, 1.0, True),
    "conch_v1_contrast": (512, 448, CLIP, 1.0, True),
    "hibou_b": (768, 224, HIBOU, 1.0, False),
    "hibou_l": (1024, 224, HIBOU, 1.0, False),
    "midnight": (3072, 224, ((0.5,) * 3, (0.5,) * 3), 1.0, False),
}
# licences as the model cards state them (checked 2026-12-03; see docs/how-to/encoders.md)
LICENCES = {
    "uni": "CC-BY-NC-ND-4.0",
    "uni2_h": "CC-BY-NC-ND-4.0",
    "virchow": "Apache-2.0 + gated terms (research use attested)",
    "virchow2": "CC-BY-NC-ND-4.0",
    "h_optimus_0": "Apache-2.0",
    "h_optimus_1": "CC-BY-NC-ND-4.0",
    "phikon": "Owkin non-commercial licence",
    "phikon_v2": "Owkin non-commercial licence",
    "prov_gigapath": "Apache-2.0 + gated terms (research use only)",
    "conch_v1": "CC-BY-NC-ND-4.0",
    "conch_v1_contrast": "CC-BY-NC-ND-4.0",
    "hibou_b": "Apache-2.0",
    "hibou_l": "Apache-2.0",
    "midnight": "MIT",
}
# published parameter counts (millions) of the tile encoders, ±2 %
PARAMETERS_M = {
    "uni": 303,
    "uni2_h": 681,
    "virchow": 632,
    "virchow2": 632,
    "h_optimus_0": 1134,
    "phikon": 86,
    "prov_gigapath": 1134,
    "hibou_b": 86,
    "hibou_l": 304,
    "midnight": 1134,
    # CONCH: the 86 M ViT-B/16 trunk plus the attentional pooler and projection (1.6 M)
    "conch_v1": 87.6,
    "conch_v1_contrast": 87.6,
}


def test_every_preset_has_the_documented_preprocessing_and_licence():
    assert set(PRESETS) == set(DOCUMENTED)
    for name, (width, size, (mean, std), crop, nc) in DOCUMENTED.items():
        p = PRESETS[name]
        assert (p.feature_dim, p.input_size, p.mean, p.std) == (width, size, mean, std), name
        assert p.crop_pct == pytest.approx(crop) and p.non_commercial is nc, name
        assert p.licence == LICENCES[name], name
        # a CC-BY-NC or "non-commercial" licence is always flagged
        assert p.non_commercial or not ("NC" in p.licence or "non-commercial" in p.licence)
    cards = {c.name: c for c in encoder_cards(["efficientnet_lite0", "mine"])}
    assert cards["virchow2"].feature_dim == 2560 and cards["virchow2"].non_commercial
    assert cards["mine"].licence == "unknown" and cards["efficientnet_lite0"].feature_dim == 1280


def _meta_width(name: str) -> tuple[int, float]:
    p = PRESETS[name]
    with torch.device("meta"):
        module = p.build_module()
        out = module(torch.empty(2, 3, p.input_size, p.input_size))
    return out.shape[1], sum(t.numel() for t in module.parameters()) / 1e6


@pytest.mark.parametrize("name", ["conch_v1"])  # the others in the slow tier
def test_small_presets_give_their_width(name):
    width, millions = _meta_width(name)
    assert width == DOCUMENTED[name][0]
    assert millions == pytest.approx(PARAMETERS_M[name], rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_preset_gives_its_width(name):
    width, millions = _meta_width(name)
    assert width == DOCUMENTED[name][0]
    if name in PARAMETERS_M:
        assert millions == pytest.approx(PARAMETERS_M[name], rel=0.02)


def _tiny_vit(**kw) -> nn.Module:
    args = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(**{**args, **kw}).eval()
    with torch.no_grad():  # layer scale and biases away from their init values
        for t in vit.parameters():
            t.add_(torch.randn_like(t) * 0.02)
    return vit


def test_cls_mean_pool_leaves_registers_out():
    vit = _tiny_vit(reg_tokens=4, global_pool="")
    x = torch.randn(3, 3, 28, 28)
    tokens = vit.forward_features(x)  # 1 class + 4 registers + 4 patches
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1)
    torch.testing.assert_close(ClsMeanPool(vit)(x), expected)


def _as_hf_dinov2(vit: nn.Module, swiglu: bool) -> dict[str, torch.Tensor]:
    """``vit``'s tensors under transformers' Dinov2 names (class position in the grid)."""
    s = vit.state_dict()
    d = vit.embed_dim
    pos0 = torch.randn(1, 1, d)
    out = {
        "embeddings.cls_token": s["cls_token"] - pos0,
        "embeddings.mask_token": torch.zeros(1, d),
        "embeddings.position_embeddings": torch.cat([pos0, s["pos_embed"]], dim=1),
        "embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
        "layernorm.weight": s["norm.weight"],
        "layernorm.bias": s["norm.bias"],
    }
    if "reg_token" in s:
        out["embeddings.register_tokens"] = s["reg_token"]
    mlp_in, mlp_out = ("weights_in", "weights_out") if swiglu else ("fc1", "fc2")
    for i in range(len(vit.blocks)):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = s[b + f"attn.qkv.{kind}"].chunk(3)
            out |= {
                h + f"attention.attention.query.{kind}": q,
                h + f"attention.attention.key.{kind}": k,
                h + f"attention.attention.value.{kind}": v,
                h + f"attention.output.dense.{kind}": s[b + f"attn.proj.{kind}"],
                h + f"norm1.{kind}": s[b + f"norm1.{kind}"],
                h + f"norm2.{kind}": s[b + f"norm2.{kind}"],
                h + f"mlp.{mlp_in}.{kind}": s[b + f"mlp.fc1.{kind}"],
                h + f"mlp.{mlp_out}.{kind}": s[b + f"mlp.fc2.{kind}"],
            }
        out[h + "layer_scale1.lambda1"] = s[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = s[b + "ls2.gamma"]
    return out


@pytest.mark.parametrize("swiglu", [False, True])
def test_hf_dinov2_checkpoint_loads_into_timm_exactly(swiglu):
    kw = dict(reg_tokens=4, no_embed_class=True, init_values=1e-5)
    if swiglu:
        kw |= dict(mlp_layer=timm.layers.SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=2.66667 * 2)
    source = _tiny_vit(**kw)
    state = to_timm_keys(
        {"dinov2." + k: v for k, v in _as_hf_dinov2(source, swiglu).items()}, "hf-dinov2"
    )
    target = _tiny_vit(**kw)
    with torch.no_grad():
        for t in target.parameters():
            t.zero_()
    fit_position_embedding(state, target)
    target.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(target(x), source(x))


def test_hf_vit_and_conch_checkpoints_load_into_timm():
    source = _tiny_vit()
    s = source.state_dict()
    hf = {
        "embeddings.cls_token": s["cls_token"],
        "embeddings.position_embeddings": s["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
        "layernorm.weight": s["norm.weight"],
        "layernorm.bias": s["norm.bias"],
        "pooler.dense.weight": torch.zeros(32, 32),
    }
    for i in range(2):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = s[b + f"attn.qkv.{kind}"].chunk(3)
            hf |= {
                h + f"attention.attention.query.{kind}": q,
                h + f"attention.attention.key.{kind}": k,
                h + f"attention.attention.value.{kind}": v,
                h + f"attention.output.dense.{kind}": s[b + f"attn.proj.{kind}"],
                h + f"layernorm_before.{kind}": s[b + f"norm1.{kind}"],
                h + f"layernorm_after.{kind}": s[b + f"norm2.{kind}"],
                h + f"intermediate.dense.{kind}": s[b + f"mlp.fc1.{kind}"],
                h + f"output.dense.{kind}": s[b + f"mlp.fc2.{kind}"],
            }
    assert to_timm_keys(hf, "hf-vit").keys() == s.keys()
    for key, value in to_timm_keys(hf, "hf-vit").items():
        torch.testing.assert_close(value, s[key])
    conch = {f"visual.trunk.{k}": v for k, v in s.items()} | {
        "text.token_embedding": s["norm.bias"]
    }
    assert to_timm_keys(conch, "conch").keys() == s.keys()


def test_position_grid_resampled_for_another_input_size():
    small, large = _tiny_vit(), _tiny_vit(img_size=56)
    state = dict(large.state_dict())
    fit_position_embedding(state, small)
    assert state["pos_embed"].shape == small.pos_embed.shape == (1, 5, 32)


TINY = FoundationPreset(
    name="tiny_fm_test",
    arch="vit_small_patch14_reg4_dinov2",
    feature_dim=64,
    input_size=28,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    licence="CC-BY-NC-ND-4.0",
    non_commercial=True,
    hub_repo="example/tiny",
    source="test",
    timm_kwargs=dict(img_size=28, embed_dim=32, depth=2, num_heads=2, init_values=1e-5),
    pooling="cls+mean",
    key_layout="hf-dinov2",
)


def test_preset_from_a_local_checkpoint_records_licence_and_warns_once(tmp_path):
    source = TINY.build_module().eval()
    path = tmp_path / "tiny.pth"
    torch.save(_as_hf_dinov2(source.vit, swiglu=False), path)
    with pytest.warns(UserWarning, match="not for commercial use"):
        encoder = _preset_encoder(TINY, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _preset_encoder(TINY, path)  # the warning comes once per process
    tiles = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    x = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        torch.testing.assert_close(encoder(tiles), source(x), rtol=1e-4, atol=1e-4)
    prov = encoder.provenance()
    assert prov["licence"] == "CC-BY-NC-ND-4.0" and prov["non_commercial"] is True
    assert prov["feature_dim"] == 64 and len(prov["weights_sha256"]) == 64


def test_centre_crop_after_resize():
    enc = Encoder(
        module=nn.Identity(),
        name="crop",
        feature_dim=3,
        input_size=224,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation="bicubic",
        crop_pct=224 / 256,
    )
    tile = np.random.default_rng(1).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    got = enc.preprocess(tile)
    expected = torch.from_numpy(tile).permute(0, 3, 1, 2).float()[..., 16:240, 16:240] / 255
    torch.testing.assert_close(got, expected)
    assert "centre crop" in enc.provenance()["resize"]
    whole = dataclasses.replace(enc, crop_pct=1.0)
    assert whole.preprocess(tile).shape == (1, 3, 224, 224)


def test_hub_preset_offline_says_how_to_pass_weights(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="--weights PATH"):
        load_encoder("uni2_h")


@pytest.mark.slow
def test_random_preset_is_not_a_hub_download():
    enc = load_encoder("hibou_b", weights=RANDOM_WEIGHTS, device="cpu")
    assert enc.weights_source == RANDOM_WEIGHTS and enc.feature_dim == 768
    assert enc.licence == "Apache-2.0" and not enc.non_commercial


def test_cli_lists_every_encoder(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name, (width, size, *_rest) in DOCUMENTED.items():
        line = next(row for row in out.splitlines() if row.startswith(name + " "))
        assert f" {width} " in line and f" {size} " in line
    assert "* CC-BY-NC-ND-4.0" in out and "efficientnet_lite0" in out


def test_feature_file_records_a_non_commercial_licence(tmp_path):
    import json

    import h5py

    from models.encoders import register_encoder
    from tests.conftest import TISSUE_TILES, write_reference_slide
    from wsi.pipeline.embed import embed_archive

    register_encoder("tiny_fm_test", lambda weights, kwargs: _preset_encoder(TINY, weights))
    slide = write_reference_slide(tmp_path / "a.tiff", 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the licence warning (once per process)
        rows = embed_archive(
            [slide],
            tmp_path / "out",
            encoder="tiny_fm_test",
            weights=RANDOM_WEIGHTS,
            workers=0,
            progress=False,
        )
    assert rows[0]["status"] == "ok"
    with h5py.File(tmp_path / "out" / "features" / "tiny_fm_test" / "a.h5") as f:
        assert f["features"].shape == (TISSUE_TILES, 64)
        encoder = json.loads(f.attrs["provenance"])["encoder"]
    assert encoder["licence"] == "CC-BY-NC-ND-4.0" and encoder["non_commercial"] is True


def _conch_by_hand(tower: ConchVisionTower, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CONCH's encode_image written out with its checkpoint's tensors: the trunk's normed
    tokens, 8-head attention of the learned query over them (separate q/k/v projections,
    keys and values of the trunk's width), LayerNorm; then projection and L2 norm."""
    f = nn.functional
    s = {k: v.detach() for k, v in tower.state_dict().items()}
    p = "attn_pool_contrast."
    tokens = tower.vit.forward_features(x)
    keys = f.layer_norm(tokens, (tokens.shape[-1],), s[p + "ln_k.weight"], s[p + "ln_k.bias"])
    query = f.layer_norm(s[p + "query"], (512,), s[p + "ln_q.weight"], s[p + "ln_q.bias"])
    bq, bk, bv = s[p + "attn.in_proj_bias"].chunk(3)
    q = query @ s[p + "attn.q_proj_weight"].T + bq  # (1, 512)
    k = keys @ s[p + "attn.k_proj_weight"].T + bk  # (B, L, 512)
    v = keys @ s[p + "attn.v_proj_weight"].T + bv
    heads = []
    for h in range(8):
        part = slice(64 * h, 64 * (h + 1))
        weights = torch.softmax(k[..., part] @ q[0, part] / 8.0, dim=-1)  # (B, L)
        heads.append(torch.einsum("bl,bld->bd", weights, v[..., part]))
    out = torch.cat(heads, dim=-1) @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
    pooled = f.layer_norm(out, (512,), s["ln_contrast.weight"], s["ln_contrast.bias"])
    return pooled, f.normalize(pooled @ s["proj_contrast"], dim=-1)


@pytest.mark.parametrize("name", ["conch_v1", "conch_v1_contrast"])
def test_conch_gives_its_512d_image_embedding_from_its_checkpoint(name, tmp_path):
    """A CONCH-layout checkpoint (trunk, contrastive pooler, projection, and the caption
    pooler and text tower it also holds) loads into the preset, which then gives
    encode_image(proj_contrast=False, normalize=False) (conch_v1) or encode_image()
    (conch_v1_contrast)."""
    tiny = dict(img_size=32, embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True)
    preset = dataclasses.replace(PRESETS[name], input_size=32, timm_kwargs=tiny)
    torch.manual_seed(0)
    source = preset.build_module().eval()
    with torch.no_grad():
        for t in source.parameters():
            t.add_(torch.randn_like(t) * 0.05)
    checkpoint = {
        ("visual.trunk." + k[4:] if k.startswith("vit.") else "visual." + k): v
        for k, v in source.state_dict().items()
    } | {
        "visual.attn_pool_caption.query": torch.randn(256, 768),
        "visual.ln_caption.weight": torch.ones(768),
        "text.token_embedding.weight": torch.randn(10, 768),
        "logit_scale": torch.tensor(1.0),
    }
    path = tmp_path / "pytorch_model.bin"
    torch.save(checkpoint, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the non-commercial licence warning
        encoder = _preset_encoder(preset, path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = encoder.module(x)
        pooled, projected = _conch_by_hand(source, x)
    assert got.shape == (3, 512) and encoder.feature_dim == 512
    torch.testing.assert_close(got, projected if name == "conch_v1_contrast" else pooled)
    if name == "conch_v1_contrast":
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))

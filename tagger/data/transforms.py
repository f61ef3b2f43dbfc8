"""The albumentations transforms (uint8 items) and the batch normalisation that turns uint8
batches into model input on the device.

Items stay uint8 [H, W, C] up to the model: per-image float normalisation (albumentations'
Normalize) and stacking float [C, H, W] views cost ~3 ms per 224 px image on the CPU, more
than decoding and resizing; one (x - mean) / std over the whole batch, on the device, costs
~0.1 ms per image on the CPU, and uint8 batches are a quarter of the bytes between loader
workers and the main process, and over PCIe to a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import torch

from catalog_schemas.card import DataConfig


WHITE = (255, 255, 255)

def create_transforms(image_size: int, *, train: bool):
    """Square uint8 [image_size, image_size, 3] array with the whole product in the picture
    (ProductImages makes it a tensor; BatchNormalize normalises whole batches).

    The product is fitted, not cropped, and padded with white (the usual studio background).
    Training adds what keeps labels true: mild scale/shift, a small rotation, a horizontal
    flip, brightness/contrast. No hue or colour jitter: colour is a label.
    """
    fit = [
        A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA),
        A.PadIfNeeded(image_size, image_size, border_mode=cv2.BORDER_CONSTANT, fill=WHITE),
    ]
    augment = [
        A.Affine(scale=(0.85, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10),
                 border_mode=cv2.BORDER_CONSTANT, fill=WHITE, p=0.8),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ] if train else []
    return A.Compose([*fit, *augment])

class BatchNormalize:
    """uint8 [N, H, W, C] batches from the loader -> float32 [N, C, H, W] model input,
    (x / 255 - mean) / std, computed where the model runs (after the uint8 copy to the device).

    channels_last gives that memory format (the permuted uint8 batch already has it); else
    contiguous NCHW (ONNX Runtime's input). `reuse` (inference only) writes every batch into
    one buffer per device: a fresh 38 MB float tensor per CPU batch costs more in page faults
    than the arithmetic, so the caller must be done with a batch before asking for the next.
    Float batches are taken as model input already (tests, callers with their own transform)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, reuse: bool = False):
        self.mean = torch.tensor([255.0 * m for m in mean], dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(1, -1, 1, 1)
        self.reuse = reuse
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, data_config: DataConfig, **kw) -> BatchNormalize:
        """From a model card's data_config (tagger.model.factory.data_config): mean and std."""
        return cls(data_config.mean, data_config.std, **kw)

    def __call__(self, x: torch.Tensor, device: torch.device | None = None, *,
                 channels_last: bool = False) -> torch.Tensor:
        device = torch.device(device) if device is not None else x.device
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if x.is_floating_point():
            return x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != self.mean.shape[1]:
            raise TypeError(f"expected a uint8 [N, H, W, {self.mean.shape[1]}] batch, got "
                            f"{x.dtype} {tuple(x.shape)}")
        nchw = x.to(device, non_blocking=True).permute(0, 3, 1, 2)
        out = self._output(nchw.shape, device, fmt)
        out.copy_(nchw)
        mean, scale = self._on(device)
        return out.sub_(mean).mul_(scale)

    def _output(self, shape, device: torch.device, fmt) -> torch.Tensor:
        if not self.reuse:
            return torch.empty(shape, dtype=torch.float32, device=device, memory_format=fmt)
        key = (device, fmt, tuple(shape[1:]))
        buf = self._buffers.get(key)
        if buf is None or len(buf) < shape[0]:
            self._buffers.clear()  # one buffer: the largest batch of the current shape
            buf = self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=device,
                                                   memory_format=fmt)
        return buf[: shape[0]]  # slicing the batch axis keeps either memory format

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            self._constants[device] = (self.mean.to(device), self.scale.to(device))
        return self._constants[device]


def model_inputs(x, normalize: BatchNormalize | None, device: torch.device, *,
                 channels_last: bool = False) -> tuple[torch.Tensor, ...]:
    """A loader batch's input as the model's arguments on `device`: (images,), or (images,
    tokens) where the dataset gives text too (ProductImages with a text config)."""
    if isinstance(x, (list, tuple)):
        images, *rest = x
        return (model_input(images, normalize, device, channels_last=channels_last),
                *(t.to(device, non_blocking=True) for t in rest))
    return (model_input(x, normalize, device, channels_last=channels_last),)


def model_input(x: torch.Tensor, normalize: BatchNormalize | None, device: torch.device, *,
                channels_last: bool = False) -> torch.Tensor:
    """A loader batch as float model input on `device` (see BatchNormalize); float batches
    without `normalize` are taken as model input already."""
    if normalize is not None:
        return normalize(x, device, channels_last=channels_last)
    if not x.is_floating_point():
        raise TypeError(f"a {x.dtype} image batch needs normalize= (tagger.data.transforms.BatchNormalize)")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, non_blocking=True).contiguous(memory_format=fmt)

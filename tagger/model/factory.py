"""The model: a timm backbone with one logit per (attribute, value), the input
normalisation derived from it, and test-time augmentation (TTA) around it for scoring."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from catalog_schemas.card import DataConfig, TextConfig
from tagger.backbones import get_backbone
from tagger.model.device import network, unwrap
from tagger.model.text import ImageTextModel
from tagger.model.weights import WeightsError, read_state_dict

log = logging.getLogger(__name__)


def create_model(
    backbone: str,
    num_outputs: int,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    inputs: str = "image",
    text: TextConfig | None = None,
    text_dropout: float = 0.0,
    image_dropout: float = 0.0,
) -> nn.Module:
    """timm backbone + a fresh linear head with `num_outputs` logits.

    `weights` (a local or S3 file) starts the backbone from those weights; its classifier is
    replaced. `pretrained` downloads the backbone's default pretrained weights from the hub.
    `inputs` 'image+text' or 'text' (with `text`): an ImageTextModel (tagger.model.text),
    the backbone's pooled features fused with the text branch, or the text branch alone.
    """
    if inputs != "image":
        if text is None:
            raise ValueError(f"inputs {inputs!r} needs a TextConfig")
        image = None if inputs == "text" else _backbone(backbone, 0, pretrained, weights)
        return ImageTextModel(image, text, num_outputs, text_dropout=text_dropout,
                              image_dropout=image_dropout)
    return _backbone(backbone, num_outputs, pretrained, weights)


def _backbone(backbone: str, num_outputs: int, pretrained: bool, weights: str | None) -> nn.Module:
    """The timm model with `num_outputs` logits (0: pooled features, no classifier)."""
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


def data_config(model: nn.Module, image_size: int) -> DataConfig:
    """Input normalisation derived from the model (timm's pretrained config), not hard-coded."""
    import timm.data

    m = unwrap(model)
    if isinstance(m, ImageTextModel) and m.image is None:  # text only: its images are never looked at
        return DataConfig(image_size=image_size, mean=tuple(timm.data.IMAGENET_DEFAULT_MEAN),
                          std=tuple(timm.data.IMAGENET_DEFAULT_STD))
    if isinstance(m, ImageTextModel):
        m = m.image
    cfg = timm.data.resolve_data_config({}, model=m)
    return DataConfig(image_size=image_size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


class FlipTTA(nn.Module):
    """Horizontal-flip test-time augmentation: the mean of the logits of each image and of
    its mirror image. Logits, not scores, are averaged, so temperatures and thresholds
    tuned on these outputs keep their meaning. Costs two forward passes per image.

    The plain model is held as `model`, not `module`: `unwrap` strips DDP / torch.compile
    but must keep this wrapper, or scoring would silently lose the flip. Never save the
    weights of a wrapper (its keys gain a `model.` prefix): register the plain model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        # two passes rather than one of a doubled batch: the same peak memory as no TTA; the
        # text (of a model that reads it) is the same for both. A named argument, not *args:
        # torch.export needs one input per name
        text = () if tokens is None else (tokens,)
        return (self.model(x, *text) + self.model(torch.flip(x, dims=[3]), *text)) / 2


# name -> wrapper (None: the plain model); TrainConfig.tta and ModelCard.tta take these names
TTA = {"none": None, "flip": FlipTTA}


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """`model` scored with test-time augmentation `tta` (see TTA); the model itself for none.
    Wrap for scoring only: the registered weights are the plain model's."""
    if tta not in TTA:
        raise ValueError(f"Unknown test-time augmentation {tta!r}. Known: {', '.join(TTA)} "
                         "(see tagger/model/factory.py).")
    wrapper = TTA[tta]
    return model if wrapper is None else wrapper(model).train(model.training)


def output_layer(model: nn.Module) -> nn.Linear:
    """The linear layer whose outputs are `model`'s logits: a fused model's head, or a timm
    classifier (also inside a TTA / DDP / compile wrapper)."""
    model = network(model)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    get = getattr(model, "get_classifier", None)
    layer = get() if get is not None else None
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear output layer to fold a shift into")
    return layer


def fold_into_output_bias(model: nn.Module, shift: np.ndarray) -> None:
    """Add `shift` [K] (numpy) to the bias of `model`'s output layer, in place: a decision
    shift every scorer then applies (tagger.quality.prior_shift)."""
    layer = output_layer(model)
    with torch.no_grad():
        layer.bias.add_(torch.as_tensor(shift, dtype=layer.bias.dtype, device=layer.bias.device))

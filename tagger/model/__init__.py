"""The model: backbones, the timm network, weights, devices, inference, versions in the lake."""

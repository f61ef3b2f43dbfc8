"""Models that read the product's text: the text branch and its fusion with the image.

The text branch averages the embeddings of a product's hashed features
(tagger.data.text): a bag of words, word pairs and character n-grams, the fastText-style
classifier that is hard to beat on product titles. ImageTextModel concatenates that vector
with the backbone's pooled image features and maps both to the logits with one linear
layer, trained end to end. During training the whole text vector of a product is zeroed
with probability `text_dropout`, so a product whose title is empty or missing (a zero
vector at scoring time too) is still tagged from its image. Likewise the image features of
a product with a title are zeroed with probability `image_dropout`, so the head's text
columns alone are a title-only classifier.

That makes the photo's share of each output a measured choice: the logits are
`text part + bias + w * image part`, with `image_weight` w per output (1 while training).
After training, w is chosen per single-choice attribute on validation
(tagger.quality.image_weight.choose_image_weight): where the title alone decides better
(gender and category are usually written in it), the photo's part is turned down. A
product without text always keeps its whole image part: the photo is all it has. The card
records w (ModelCard.image_weight) and the model is built with it, so every scorer (torch,
ONNX Runtime, TTA, pooling) computes the same logits.

`inputs='text'` drops the image branch: the same text features alone, what the quality
benchmark measures the fusion against. Both take (images, tokens), so every scorer calls
them alike; the text-only model ignores its images.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from catalog_schemas.card import TextConfig


class TextBranch(nn.Module):
    """int64 [B, L] hashed feature ids (0: padding) -> float [B, dim], their mean embedding
    (zeros for a product without text)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.buckets + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        present = (tokens > 0).unsqueeze(-1)
        summed = (self.embedding(tokens) * present).sum(1)
        return summed / present.sum(1).clamp_min(1)


class ImageTextModel(nn.Module):
    """logits [B, K] from images [B, 3, H, W] and tokens [B, L]: image features (a timm
    backbone without its classifier; None for a text-only model) and the text vector,
    concatenated, through one linear head; the image columns' part of each output scaled by
    `image_weight` where the product has text."""

    def __init__(self, image: nn.Module | None, text: TextConfig, num_outputs: int, *,
                 text_dropout: float = 0.0, image_dropout: float = 0.0):
        super().__init__()
        self.image = image
        self.text = TextBranch(text)
        self.text_config, self.text_dropout, self.image_dropout = text, text_dropout, image_dropout
        self.image_width = pooled_width(image) if image is not None else 0
        self.head = nn.Linear(self.image_width + text.dim, num_outputs)
        # not in the weights file: the card holds it (ModelCard.image_weight)
        self.register_buffer("image_weight", torch.ones(num_outputs), persistent=False)

    @property
    def inputs(self) -> str:
        return "text" if self.image is None else "image+text"

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = self.text(tokens)
        if self.image is None:
            return self.head(t)
        has_text = (tokens > 0).any(1, keepdim=True)
        if self.training and self.text_dropout > 0:
            keep = torch.rand(t.shape[0], 1, device=t.device) >= self.text_dropout
            t, has_text = t * keep, has_text & keep
        f = self.image(images)
        w = self.head.weight
        image_part = F.linear(f, w[:, :self.image_width])
        text_part = F.linear(t.to(f.dtype), w[:, self.image_width:], self.head.bias)
        # a product without text keeps its whole image part
        scale = torch.where(has_text, self.image_weight, 1.0)
        if self.training and self.image_dropout > 0:
            hidden = has_text & (torch.rand(t.shape[0], 1, device=t.device) < self.image_dropout)
            scale = scale * ~hidden
        return text_part + scale * image_part


@contextmanager
def image_weighted(model: nn.Module, weight: np.ndarray) -> Iterator[None]:
    """Score `model` (a fused model, also inside a TTA / DDP / compile wrapper) with
    `weight` [K] as its image_weight for the duration; the one it had is restored."""
    m = _fused(model)
    before = m.image_weight.clone()
    set_image_weight(m, weight)
    try:
        yield
    finally:
        m.image_weight.copy_(before)


def set_image_weight(model: nn.Module, weight) -> None:
    """Set a fused model's image_weight [K] (numpy or tensor), in place."""
    m = _fused(model)
    with torch.no_grad():
        m.image_weight.copy_(torch.as_tensor(np.asarray(weight, np.float32), device=m.image_weight.device))


def _fused(model: nn.Module) -> ImageTextModel:
    m = fused_network(model)
    if m is None:
        raise TypeError(f"{type(model).__name__} does not fuse a photo with text: it has no image_weight")
    return m


def fused_network(model: nn.Module) -> ImageTextModel | None:
    """The ImageTextModel reading both the photo and the text inside `model`'s wrappers, or
    None for any other model."""
    from tagger.model.device import network

    m = network(model)
    return m if isinstance(m, ImageTextModel) and m.image is not None else None


def pooled_width(backbone: nn.Module) -> int:
    """The width of what a timm backbone without its classifier returns: `head_hidden_size`
    where the model has a layer after pooling (MobileNetV3's 1024 over its 576 num_features),
    else `num_features`."""
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features


def text_config_of(model: nn.Module) -> TextConfig | None:
    """The TextConfig of `model` (or of the model inside a TTA / DDP / compile wrapper) if
    it reads text, else None."""
    from tagger.model.device import network

    m = network(model)
    return m.text_config if isinstance(m, ImageTextModel) else None

"""Models that read the product's text: the text branch and its fusion with the image.

The text branch averages the embeddings of a product's hashed features
(tagger.data.text): a bag of words, word pairs and character n-grams, the fastText-style
classifier that is hard to beat on product titles. ImageTextModel concatenates that vector
with the backbone's pooled image features and maps both to the logits with one linear
layer, trained end to end. During training the whole text vector of a product is zeroed
with probability `text_dropout`, so a product whose title is empty or missing (a zero
vector at scoring time too) is still tagged from its image.

`inputs='text'` drops the image branch: the same text features alone, what the quality
benchmark measures the fusion against. Both take (images, tokens), so every scorer calls
them alike; the text-only model ignores its images.
"""

from __future__ import annotations

import torch
from torch import nn

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
    concatenated, through one linear head."""

    def __init__(self, image: nn.Module | None, text: TextConfig, num_outputs: int, *,
                 text_dropout: float = 0.0):
        super().__init__()
        self.image = image
        self.text = TextBranch(text)
        self.text_config, self.text_dropout = text, text_dropout
        features = (pooled_width(image) if image is not None else 0) + text.dim
        self.head = nn.Linear(features, num_outputs)

    @property
    def inputs(self) -> str:
        return "text" if self.image is None else "image+text"

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = self.text(tokens)
        if self.training and self.text_dropout > 0 and self.image is not None:
            keep = torch.rand(t.shape[0], 1, device=t.device) >= self.text_dropout
            t = t * keep
        if self.image is None:
            return self.head(t)
        f = self.image(images)
        return self.head(torch.cat([f, t.to(f.dtype)], dim=1))


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

"""The text branch fitted alone first: it learns from titles alone, and the fused model
starts exactly as that text model, its head's image columns at zero."""

from __future__ import annotations

import numpy as np
import torch

from catalog_schemas.card import TextConfig
from tagger.data.text import encode_texts
from tagger.model.text import ImageTextModel
from tagger.train.loop import TrainLabels, create_fit
from tagger.train.text_warmup import warm_up_text
from tests.conftest import SMALL_TAXONOMY, TINY_TRAIN

TEXT = TextConfig(buckets=512, dim=8)
COLOURS = ["red", "blue", "green"]


class _Image(torch.nn.Module):
    """A stand-in backbone: 4 features from the pixels' channel means."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def _data(n: int = 90):
    rng = np.random.default_rng(0)
    colour = rng.integers(3, size=n)
    texts = [f"a {COLOURS[c]} shirt" for c in colour]
    targets = np.zeros((n, SMALL_TAXONOMY.num_outputs), np.float32)
    targets[np.arange(n), colour] = 1
    mask = np.zeros_like(targets, bool)
    mask[:, :3] = True  # colour known, features unknown
    return texts, targets, mask


def test_the_fused_model_starts_as_the_warmed_up_text_model():
    torch.manual_seed(0)
    texts, targets, mask = _data()
    config = TINY_TRAIN.model_copy(update=dict(text_warmup_epochs=8, batch_size=16, lr=1e-2, text_lr_scale=10.0))
    model = ImageTextModel(_Image(), TEXT, SMALL_TAXONOMY.num_outputs, text_dropout=0.3)
    fit = create_fit(model, config, 10, torch.ones(SMALL_TAXONOMY.num_outputs), None, torch.device("cpu"),
                     labels=TrainLabels(SMALL_TAXONOMY, targets, mask))
    before = model.text.embedding.weight.detach().clone()
    losses = warm_up_text(model, texts, targets, mask, fit, config)
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert not torch.equal(before, model.text.embedding.weight)
    assert torch.count_nonzero(model.head.weight[:, :4]) == 0  # the image columns
    model.eval()
    tokens = torch.from_numpy(encode_texts(texts, TEXT))
    images = torch.rand(len(texts), 3, 8, 8)
    with torch.no_grad():
        logits = model(images, tokens)
        other = model(torch.rand_like(images), tokens)
    torch.testing.assert_close(logits, other)  # the photo does not count yet
    predicted = logits[:, :3].argmax(1).numpy()
    assert (predicted == targets[:, :3].argmax(1)).mean() == 1.0  # the title says the colour

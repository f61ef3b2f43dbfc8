"""A product's text as model input: hashed features, no vocabulary and no download.

The features of a text are its lower-cased words, each pair of neighbouring words, and the
character n-grams of each word with its boundaries (``<navy>`` gives ``<na nav avy vy>``),
in that order; each is hashed (CRC-32, stable across processes and machines, unlike
Python's ``hash``) into one of ``TextConfig.buckets`` rows of the model's embedding table.
Id 0 is padding: a product without text is a row of zeros, which the model reads as "no
text" (tagger.model.text). Numpy only, so the ONNX scoring path encodes text without torch.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from catalog_schemas.card import TextConfig

_WORD = re.compile(r"[^\W_]+")


def text_features(text: str | None, config: TextConfig) -> list[str]:
    """The features of `text`, words first, then word pairs, then character n-grams."""
    if not text:
        return []
    words = _WORD.findall(text.lower())
    feats = [f"w:{w}" for w in words] + [f"p:{a} {b}" for a, b in zip(words, words[1:])]
    for w in words:
        padded = f"<{w}>"
        feats += [f"c:{padded[i:i + n]}" for n in config.char_ngrams for i in range(len(padded) - n + 1)]
    return feats


def encode_text(text: str | None, config: TextConfig) -> np.ndarray:
    """int64 [max_tokens]: the hashed ids (1..buckets) of the first max_tokens features, 0-padded."""
    out = np.zeros(config.max_tokens, np.int64)
    feats = text_features(text, config)[:config.max_tokens]
    if feats:
        out[:len(feats)] = [zlib.crc32(f.encode()) % config.buckets + 1 for f in feats]
    return out


def encode_texts(texts: Sequence[str | None], config: TextConfig) -> np.ndarray:
    """int64 [N, max_tokens]: encode_text of each text."""
    out = np.zeros((len(texts), config.max_tokens), np.int64)
    for i, t in enumerate(texts):
        out[i] = encode_text(t, config)
    return out

"""The photo's weight per attribute of a fused model, chosen on validation logits."""

import numpy as np

from tagger.quality.image_weight import WEIGHTS, choose_image_weight


def _case(n: int = 400, seed: int = 0):
    """Two single attributes of 3 values: the title is right about `title_knows` always and
    the fused logits are noisy there; about `photo_helps` the title is a coin toss between
    two values and the photo's part settles it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(3, size=(n, 2))
    targets = np.zeros((n, 6), np.float32)
    targets[np.arange(n), y[:, 0]] = 1
    targets[np.arange(n), 3 + y[:, 1]] = 1
    onehot = targets * 4.0
    title = np.concatenate([onehot[:, :3], rng.normal(0, 1, (n, 3))], 1)
    photo = np.concatenate([rng.normal(0, 3, (n, 3)), onehot[:, 3:]], 1)
    return title, photo, targets, np.ones_like(targets, bool)


def test_each_attribute_takes_the_weight_that_decides_it_best():
    title, photo, targets, mask = _case()
    slices = {"title_knows": slice(0, 3), "photo_helps": slice(3, 6)}
    seen = []

    def blended(w):
        seen.append(w)
        return title + w * photo

    chosen = choose_image_weight(blended, targets, mask, slices)
    assert sorted(seen) == sorted(WEIGHTS)  # every candidate scored once
    assert chosen["title_knows"] < 1 and chosen["photo_helps"] == 1.0


def test_ties_and_attributes_without_known_rows_keep_the_photo():
    title, photo, targets, mask = _case()
    mask[:, :3] = False  # nothing known about the first attribute
    slices = {"unknown": slice(0, 3), "no_photo": slice(3, 6)}
    chosen = choose_image_weight(lambda w: title + 0 * photo, targets, mask, slices)
    assert chosen == {"unknown": 1.0, "no_photo": 1.0}  # equal at every w: as trained

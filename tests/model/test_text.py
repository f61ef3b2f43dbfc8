"""The text branch: hashed features, the fused model, and its ONNX export."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from catalog_schemas.card import TextConfig
from tagger.data.text import encode_text, encode_texts, text_features
from tagger.model.factory import FlipTTA, create_model
from tagger.model.text import ImageTextModel, image_weighted, set_image_weight, text_config_of

SMALL = TextConfig(buckets=1024, dim=8, max_tokens=24)


def test_features_are_words_then_pairs_then_character_ngrams():
    feats = text_features("Navy  T-Shirt", SMALL)
    assert feats[:4] == ["w:navy", "w:t", "w:shirt", "p:navy t"]
    assert feats[5] == "c:<na" and "c:rt>" in feats
    assert text_features(None, SMALL) == text_features("", SMALL) == []


def test_ids_are_stable_hashes_padded_and_cut_at_max_tokens():
    ids = encode_text("Navy shirt", SMALL)
    assert ids.dtype == np.int64 and ids.shape == (24,)
    assert ids[0] == zlib.crc32(b"w:navy") % 1024 + 1  # the same in every process and machine
    n = len(text_features("Navy shirt", SMALL))
    assert (ids[:n] > 0).all() and (ids[n:] == 0).all()
    long = encode_text(" ".join(f"word{i}" for i in range(40)), SMALL)
    assert (long > 0).all()  # cut at max_tokens: the first 24 features, all words
    assert long[0] == zlib.crc32(b"w:word0") % 1024 + 1
    assert (encode_texts([None, "Navy shirt"], SMALL) == np.stack([np.zeros(24, np.int64), ids])).all()


def test_the_fused_model_reads_both_and_a_missing_text_is_the_zero_vector():
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 5, inputs="image+text", text=SMALL, text_dropout=0.5).eval()
    assert isinstance(model, ImageTextModel) and text_config_of(model) == text_config_of(FlipTTA(model)) == SMALL
    images = torch.rand(3, 3, 32, 32)
    tokens = torch.from_numpy(encode_texts(["red shirt", "blue shirt", None], SMALL))
    out = model(images, tokens)
    assert out.shape == (3, 5)
    assert not torch.allclose(out[0], model(images, tokens.flip(0))[2])  # the text changes the logits
    assert torch.equal(model.text(tokens[2:]), torch.zeros(1, 8))  # no text: zeros
    # eval mode: no text dropout, so scoring is deterministic
    assert torch.equal(out, model(images, tokens))


@pytest.mark.parametrize("backbone", ["test_efficientnet", "mobilenetv3_small"])
def test_the_head_takes_the_width_the_backbone_gives(backbone):
    """A backbone with a layer after pooling (MobileNetV3: 1024 wide over 576 num_features)
    gives the head the wider vector."""
    model = create_model(backbone, 5, inputs="image+text", text=SMALL).eval()
    tokens = torch.from_numpy(encode_texts(["red shirt", None], SMALL))
    assert model(torch.rand(2, 3, 64, 64), tokens).shape == (2, 5)


def test_text_dropout_hides_whole_texts_in_training_only():
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 4, inputs="image+text", text=SMALL, text_dropout=0.5)
    model.image.eval()  # BatchNorm in eval: differences come from the text alone
    images = torch.rand(1, 3, 32, 32).expand(64, 3, 32, 32)  # one image: only the text differs
    tokens = torch.from_numpy(encode_texts(["striped shirt"] * 64, SMALL))
    no_text = model(images, torch.zeros_like(tokens))
    out = model(images, tokens)
    hidden = torch.isclose(out, no_text, atol=1e-6).all(1)
    assert 16 < int(hidden.sum()) < 48  # about half the products lost their text


def test_image_dropout_hides_the_photo_of_products_with_text_in_training_only():
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 4, inputs="image+text", text=SMALL, image_dropout=0.5)
    model.image.eval()
    images = torch.rand(1, 3, 32, 32).expand(64, 3, 32, 32)
    tokens = torch.from_numpy(encode_texts(["striped shirt"] * 32 + [None] * 32, SMALL))
    with torch.no_grad():
        features = model.image(images)
        title_only = model.head(torch.cat([torch.zeros_like(features), model.text(tokens)], 1))
    out = model(images, tokens)
    hidden = torch.isclose(out, title_only, atol=1e-6).all(1)
    assert 6 < int(hidden[:32].sum()) < 26  # about half the products with a title lost the photo
    assert int(hidden[32:].sum()) == 0  # a product without text always keeps it
    model.eval()
    assert not torch.isclose(model(images, tokens), title_only, atol=1e-6).all(1)[:32].any()


def test_the_photos_weight_scales_the_image_part_of_products_with_text():
    """logits = text part + bias + w * image part, per output; w is ignored for a product
    without text, and w = 1 is the plain linear head over [image features, text vector]."""
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 4, inputs="image+text", text=SMALL).eval()
    images = torch.rand(3, 3, 32, 32)
    tokens = torch.from_numpy(encode_texts(["red shirt", "blue dress", None], SMALL))
    with torch.no_grad():
        features, text = model.image(images), model.text(tokens)
        plain = model.head(torch.cat([features, text], 1))
        text_part = model.head(torch.cat([torch.zeros_like(features), text], 1))
        torch.testing.assert_close(model(images, tokens), plain)
        w = torch.tensor([0.0, 0.25, 1.0, 0.5])
        with image_weighted(FlipTTA(model), w):  # found inside the TTA wrapper
            got = model(images, tokens)
        torch.testing.assert_close(got[:2], text_part[:2] + w * (plain[:2] - text_part[:2]))
        torch.testing.assert_close(got[2], plain[2])  # no text: the whole photo
        torch.testing.assert_close(model(images, tokens), plain)  # restored afterwards
    with pytest.raises(TypeError, match="does not fuse"):
        set_image_weight(create_model("test_efficientnet", 4, inputs="text", text=SMALL), w)


def test_a_text_only_model_ignores_its_images():
    model = create_model("test_efficientnet", 3, inputs="text", text=SMALL).eval()
    assert model.image is None
    tokens = torch.from_numpy(encode_texts(["a", "b"], SMALL))
    assert torch.equal(model(torch.rand(2, 3, 32, 32), tokens), model(torch.zeros(2, 3, 32, 32), tokens))
    with pytest.raises(ValueError, match="TextConfig"):
        create_model("test_efficientnet", 3, inputs="text")


@pytest.mark.parametrize("inputs", ["image+text", "text"])
def test_onnx_export_of_a_model_that_reads_text_scores_as_torch(tmp_path, inputs):
    pytest.importorskip("onnxruntime")
    from tagger.model.runtime import onnx_session, session_feed

    torch.manual_seed(0)
    model = FlipTTA(create_model("test_efficientnet", 6, inputs=inputs, text=SMALL)).eval()
    images = torch.rand(5, 3, 32, 32)
    tokens = encode_texts(["red shirt", None, "blue striped dress", "logo", "tee"], SMALL)
    weights = [None] if inputs == "text" else [None, [0.0, 0.5, 1.0, 0.25, 0.0, 1.0]]
    for weight in weights:
        if weight is not None:  # a photo weight set from the card: a new export, scored alike
            set_image_weight(model, weight)
        with torch.no_grad():
            want = model(images, torch.from_numpy(tokens)).numpy()
        session = onnx_session(model, (3, 32, 32), directory=tmp_path)
        got = session.run(["logits"], session_feed(session, images.numpy(), tokens))[0]
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert len(list(tmp_path.glob("*.onnx"))) == len(weights)
    with pytest.raises(ValueError, match="no tokens"):
        session_feed(session, images.numpy(), None)


def test_the_text_branch_trains_at_its_own_lr_without_weight_decay():
    from tagger.config import TrainConfig
    from tagger.train.loop import _param_groups

    config = TrainConfig(backbone="test_efficientnet", lr=1e-3, text_lr_scale=50, weight_decay=0.05,
                         fused_text_lr_scale=None)
    model = create_model("test_efficientnet", 4, inputs="image+text", text=SMALL)
    rest, text = _param_groups(model, config)
    assert text["lr"] == 5e-2 and text["weight_decay"] == 0.0
    assert [id(p) for p in text["params"]] == [id(p) for p in model.text.parameters()]
    assert len(rest["params"]) + len(text["params"]) == len(list(model.parameters()))
    assert "lr" not in rest and "weight_decay" not in rest  # the optimizer's own: lr, weight_decay
    plain = create_model("test_efficientnet", 4)
    assert len(_param_groups(plain, config)) == 1


def test_after_a_text_warm_up_the_fused_epochs_take_their_own_text_lr():
    from tagger.config import TrainConfig
    from tagger.train.loop import _param_groups

    config = TrainConfig(backbone="test_efficientnet", lr=1e-3, text_lr_scale=50, fused_text_lr_scale=0)
    fused = create_model("test_efficientnet", 4, inputs="image+text", text=SMALL)
    assert _param_groups(fused, config)[1]["lr"] == 0.0
    # no warm-up, nothing fitted the titles before: the branch trains at text_lr_scale
    assert _param_groups(fused, config.model_copy(update=dict(text_warmup_epochs=0)))[1]["lr"] == 5e-2
    # a text-only model has no fused epochs
    text_only = create_model("test_efficientnet", 4, inputs="text", text=SMALL)
    assert _param_groups(text_only, config)[1]["lr"] == 5e-2

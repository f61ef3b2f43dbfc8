"""Horizontal-flip test-time augmentation (tagger.model.factory FlipTTA / with_tta): the
mean of the logits of an image and its mirror, in torch and ONNX Runtime alike, tuned on at
registration, recorded on the card, and applied by load_model; the weights stay plain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from catalog_schemas.card import parse_card
from tagger.data.text import encode_texts
from tagger.io.storage import open_storage
from tagger.model import runtime
from tagger.model.factory import FlipTTA, create_model, with_tta
from tagger.model.predict import predict_scores
from tagger.model.runtime import export_onnx, predict_scores_onnx
from tagger.model.versions import load_model, read_card
from tests.conftest import DEMO_TAXONOMY, FIXTURES, TINY_TRAIN

CPU = torch.device("cpu")
K = 6
SCORE_TOL = 1e-4  # as tests/model/test_runtime.py: float32 rounding of other kernels
needs_onnx = pytest.mark.skipif(bool(runtime.missing_packages()),
                                reason=f"ONNX Runtime scoring needs {runtime.missing_packages()}")


@pytest.fixture(autouse=True)
def _private_onnx_cache(onnx_cache):
    """Every export of these tests goes to the private cache (tests/model/conftest.py)."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("test_efficientnet", K).eval()
    with torch.no_grad():  # a random head gives logits spread out, not all ~0
        m.get_classifier().weight.mul_(100)
    return m


def _images(n: int = 5, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 3, size, size, generator=g) - 0.5) / 0.25


@torch.no_grad()
def test_flip_is_the_exact_mean_of_the_image_and_its_mirror(model):
    x = _images()
    tta = with_tta(model, "flip")
    assert isinstance(tta, FlipTTA) and tta.model is model and not tta.training
    expected = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    assert torch.equal(tta(x), expected)
    assert (tta(x) - model(x)).abs().max() > 1e-3  # the mirror changes the logits


@torch.no_grad()
def test_a_mirror_symmetric_image_gives_the_plain_logits(model):
    x = _images()
    symmetric = (x + torch.flip(x, dims=[3])) / 2
    assert torch.equal(torch.flip(symmetric, dims=[3]), symmetric)
    assert torch.equal(with_tta(model, "flip")(symmetric), model(symmetric))


@torch.no_grad()
def test_channels_last_input_gives_the_same_logits(model):
    x = _images()
    cl = x.contiguous(memory_format=torch.channels_last)
    tta = with_tta(model, "flip")
    torch.testing.assert_close(tta(cl), tta(x), rtol=0, atol=1e-5)


def test_none_is_the_model_itself_and_an_unknown_name_lists_the_known(model):
    assert with_tta(model, "none") is model
    with pytest.raises(ValueError, match="Unknown test-time augmentation 'rotate'. Known: none, flip"):
        with_tta(model, "rotate")


def test_wrapping_leaves_the_models_weights_alone(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with_tta(model, "flip")
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@needs_onnx
def test_onnx_runtime_scores_the_flip_as_torch_and_caches_it_apart(model, onnx_cache):
    loader = DataLoader(TensorDataset(_images(n=9, size=48), torch.zeros(9)), batch_size=4)
    tta = with_tta(model, "flip")
    # torch first: predict_scores leaves the model channels_last with inference tensors
    ref = predict_scores(tta, loader, CPU, precision="fp32", logits=True)
    plain_ref = predict_scores(model, loader, CPU, precision="fp32", logits=True)
    got = predict_scores_onnx(tta, loader, logits=True)
    assert got.shape == (9, K) and np.abs(got - ref).max() < SCORE_TOL
    assert np.abs(ref - plain_ref).max() > 100 * SCORE_TOL  # the comparison can tell them apart
    plain = predict_scores_onnx(model, loader, logits=True)
    assert np.abs(plain - plain_ref).max() < SCORE_TOL
    # two exports, one per content: the wrapped model never reuses the plain one's file
    assert runtime.export_key(tta, (3, 48, 48)) != runtime.export_key(model, (3, 48, 48))
    assert export_onnx(tta, (3, 48, 48)) != export_onnx(model, (3, 48, 48))
    assert len(list(onnx_cache.glob("*.onnx"))) == 2


def test_an_old_card_and_model_have_no_tta(tmp_path):
    [old] = (FIXTURES / "lake_v0").glob("models/*/card.json")
    card = parse_card(old.read_bytes())
    assert card.tta == "none" and "tta" not in json.loads(card.to_json())
    model, loaded = load_model(open_storage(FIXTURES / "lake_v0"), card.version)
    assert loaded.tta == "none" and not isinstance(model, FlipTTA)


@pytest.fixture(scope="module")
def flip_lake(catalog_dir, tmp_path_factory):
    """A tiny model trained with tta=flip, and the models each predict_scores call of the
    run was given, by the module that called it."""
    from tagger.ingest.run import ingest_catalog
    from tagger.train import epochs, register
    from tagger.train.run import train_model

    lake = tmp_path_factory.mktemp("flip") / "lake"
    ingest_catalog(str(catalog_dir / "catalog.csv"), DEMO_TAXONOMY, str(lake))
    scored: list[tuple[str, type]] = []
    with pytest.MonkeyPatch.context() as mp:
        for module in (epochs, register):
            def spy(net, *a, _module=module, _real=module.predict_scores, **kw):
                scored.append((_module.__name__.rsplit(".", 1)[-1], type(net)))
                return _real(net, *a, **kw)
            mp.setattr(module, "predict_scores", spy)
        version = train_model(str(lake), TINY_TRAIN.model_copy(update=dict(tta="flip", epochs=1)))
    return lake, version, scored


@pytest.mark.slow
def test_a_flip_run_tunes_on_flipped_scores_registers_plain_weights_and_loads_wrapped(flip_lake):
    lake, version, scored = flip_lake
    # per-epoch validation ranks epochs without TTA; validation and test at registration use it
    assert {t for who, t in scored if who == "epochs"} and all(
        t is not FlipTTA for who, t in scored if who == "epochs")
    # validation, validation with the photo's part off (the photo weight's choice), test
    assert [t for who, t in scored if who == "register"] == [FlipTTA, FlipTTA, FlipTTA]

    storage = open_storage(lake)
    card = read_card(storage, version)
    assert card.tta == "flip" and card.format >= 3 and card.config["tta"] == "flip"
    assert json.loads((lake / "models" / version / "card.json").read_text())["tta"] == "flip"
    weights = load_file(str(lake / "models" / version / "model.safetensors"))
    assert weights and not any(k.startswith("model.") for k in weights)  # the plain model's keys

    model, _ = load_model(storage, version)
    assert isinstance(model, FlipTTA) and not model.training
    x = _images(n=3, size=card.image_size)
    tokens = torch.from_numpy(encode_texts(["red tee", None, "blue dress"], card.text))  # the demo's titles are read
    with torch.no_grad():
        wrapped, plain = model(x, tokens), model.model(x, tokens)
    assert wrapped.shape == (3, card.taxonomy.num_outputs)
    assert (wrapped - plain).abs().max() > 1e-6

"""A training run chooses the prior shift on validation, folds it into the registered
weights' output bias and says so on the card; `prior_shift: none` leaves the bias as trained."""

import json

import numpy as np
import pytest

import tagger.train.register as register
from tagger.io.storage import open_storage
from tagger.labels import single_slices
from tagger.model.versions import load_model, read_card
from tagger.model.factory import output_layer
from tagger.train.losses import compute_class_weights
from tagger.train.split import load_training_data, split_products
from tests.conftest import DEMO_TAXONOMY, TINY_TRAIN


@pytest.fixture(scope="module")
def lake(catalog_dir, tmp_path_factory):
    from tagger.ingest.run import ingest_catalog

    lake = tmp_path_factory.mktemp("prior-shift") / "lake"
    ingest_catalog(str(catalog_dir / "catalog.csv"), DEMO_TAXONOMY, str(lake))
    return lake


@pytest.mark.slow
def test_the_chosen_shift_is_in_the_registered_bias_and_on_the_card(lake, monkeypatch):
    from tagger.train.run import train_model

    folded = []
    fold = register.fold_into_output_bias

    def recording(model, shift):
        folded.append((output_layer(model).bias.detach().clone().numpy(), shift.copy()))
        fold(model, shift)

    monkeypatch.setattr(register, "fold_into_output_bias", recording)
    # all of the weighting undone: a shift that cannot be zero, whatever validation prefers
    choose = register.choose_prior_shift
    monkeypatch.setattr(register, "choose_prior_shift", lambda *a, **k: choose(*a, taus=(1.0,)))
    config = TINY_TRAIN.model_copy(update=dict(class_weight="linear", seed=3))
    version = train_model(str(lake), config)
    storage = open_storage(lake)
    card = read_card(storage, version)
    singles = single_slices(card.taxonomy)

    assert len(folded) == 1
    trained_bias, shift = folded[0]
    assert card.prior_shift == {name: 1.0 for name in singles}
    assert np.abs(shift).max() > 0.1
    # the shift is -tau * log(the run's class weights), per attribute
    data = load_training_data(storage)
    split = split_products(data.targets, config.val_fraction, config.test_fraction, config.seed)
    weights = compute_class_weights(data.targets[split.train], data.mask[split.train],
                                    tuple(singles.values()), "linear", config.pos_weight_max)
    for name, sl in singles.items():
        np.testing.assert_allclose(shift[sl], -card.prior_shift[name] * np.log(weights[sl]), atol=1e-6)
    # and the registered weights hold it, so every scorer applies it
    model, _ = load_model(storage, version)
    np.testing.assert_allclose(output_layer(model).bias.detach().numpy(), trained_bias + shift, atol=1e-6)


@pytest.mark.slow
def test_prior_shift_none_registers_the_bias_as_trained(lake, monkeypatch):
    from tagger.train.run import train_model

    calls = []
    monkeypatch.setattr(register, "fold_into_output_bias", lambda *a: calls.append(a))
    version = train_model(str(lake), TINY_TRAIN.model_copy(update=dict(prior_shift="none")))
    card = read_card(open_storage(lake), version)
    assert calls == [] and card.prior_shift == {}
    assert "prior_shift" not in json.loads(open_storage(lake).read_bytes(f"models/{version}/card.json"))

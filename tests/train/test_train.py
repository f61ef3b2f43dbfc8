import numpy as np
import pytest
import torch

from tagger.train import run as train_mod
from tagger.model.versions import list_versions, load_model, read_card
from tagger.io.storage import open_storage
from tagger.train.loop import create_scheduler
from tagger.train.run import train_model
from tagger.train.split import split_products, split_train_val
from tagger.data.text import encode_texts
from tests.conftest import TINY_TRAIN


def test_split_is_stratified_disjoint_and_reproducible():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.02, 0.5]).astype(np.float32)
    tr, va = split_train_val(targets, 0.25, seed=1)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 200
    assert 45 <= len(va) <= 55
    tr2, va2 = split_train_val(targets, 0.25, seed=1)
    assert np.array_equal(va, va2)
    # every value with >= 4 positives has some in each split
    for k in range(6):
        if targets[:, k].sum() >= 4:
            assert targets[va, k].sum() > 0 and targets[tr, k].sum() > 0, k


def test_three_way_split_is_disjoint_stratified_and_reproducible():
    rng = np.random.default_rng(0)
    targets = (rng.random((400, 6)) < [0.5, 0.3, 0.1, 0.05, 0.02, 0.5]).astype(np.float32)
    split = split_products(targets, 0.15, 0.15, seed=1)
    parts = (split.train, split.validation, split.test)
    assert sorted(np.concatenate(parts).tolist()) == list(range(400))  # disjoint, complete
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    assert 50 <= len(split.validation) <= 70 and 50 <= len(split.test) <= 70
    again = split_products(targets, 0.15, 0.15, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, (again.train, again.validation, again.test)))
    other = split_products(targets, 0.15, 0.15, seed=2)
    assert not np.array_equal(split.test, other.test)
    for k in range(6):  # every value with >= 8 positives has some in each split
        if targets[:, k].sum() >= 8:
            assert all(targets[p, k].sum() > 0 for p in parts), k


def test_without_a_test_split_the_split_is_the_two_way_one():
    rng = np.random.default_rng(0)
    targets = (rng.random((100, 4)) < 0.3).astype(np.float32)
    split = split_products(targets, 0.2, 0.0, seed=3)
    tr, va = split_train_val(targets, 0.2, seed=3)
    assert np.array_equal(split.train, tr) and np.array_equal(split.validation, va) and len(split.test) == 0


def test_the_splits_must_leave_room_to_train():
    with pytest.raises(ValueError, match="leave less than 10% to train on"):
        type(TINY_TRAIN).model_validate({**TINY_TRAIN.model_dump(), "val_fraction": 0.5,
                                         "test_fraction": 0.45})
    type(TINY_TRAIN).model_validate({**TINY_TRAIN.model_dump(), "val_fraction": 0.5,
                                     "test_fraction": 0.35})  # 15% left: fine


def test_scheduler_warms_up_then_decays_to_one_percent():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = TINY_TRAIN.model_copy(update=dict(epochs=2, warmup_epochs=1))
    sched = create_scheduler(opt, steps_per_epoch=4, config=cfg)
    lrs = []
    for _ in range(8):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[4] > lrs[5] > lrs[6] > lrs[7] >= 0.01
    assert sched.get_last_lr()[0] == pytest.approx(0.01)


def test_unset_loader_workers_are_four_per_gpu_and_none_on_the_cpu(monkeypatch):
    from tagger.config import TrainConfig

    assert train_mod.resolve_config(TrainConfig(device="cpu")).workers == 0
    assert train_mod.resolve_config(TrainConfig(device="cpu", workers=3)).workers == 3  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_mod.resolve_config(TrainConfig()).workers == train_mod.GPU_WORKERS == 4
    assert train_mod.resolve_config(TrainConfig(workers=0)).workers == 0


@pytest.mark.slow
def test_trained_model_is_registered_with_a_complete_card(trained_lake):
    lake, version = trained_lake
    storage = open_storage(lake)
    assert list_versions(storage) == [version]
    card = read_card(storage, version)
    taxonomy = card.taxonomy
    assert card.backbone == "test_efficientnet" and card.image_size == 48
    assert {(a, v) for a, vals in card.thresholds.items() for v in vals} == set(taxonomy.outputs)
    assert all(0 <= t <= 1 for vals in card.thresholds.values() for t in vals.values())
    assert card.config["epochs"] == 2 and card.config["batch_size"] == 16
    assert len(card.history) == 2 and card.data.train + card.data.validation + card.data.test == 60
    assert card.data.test > 0 and card.headline[0] == "test"
    for metrics in (card.metrics, card.test_metrics):
        for key in ("micro_f1", "macro_f1", "mAP", "hamming_loss", "per_attribute", "per_value"):
            assert key in metrics
    assert card.test_metrics["split"].startswith("test") and card.metrics["split"].startswith("validation")
    # products counted by the test metrics are the test split's, not validation's
    assert max(am["known"] for am in card.test_metrics["per_attribute"].values()) == card.data.test
    assert storage.list("checkpoints") == []  # removed once the version is registered
    report = storage.read_bytes(f"models/{version}/report.md").decode()
    assert "# Model" in report and report.index("_test (held out") < report.index("## Validation split")
    import json
    metrics_json = json.loads(storage.read_bytes(f"models/{version}/metrics.json"))
    assert metrics_json["micro_f1"] == card.test_metrics["micro_f1"]
    assert metrics_json["validation"]["micro_f1"] == card.metrics["micro_f1"]
    model, _ = load_model(storage, version)
    assert card.inputs == "image+text"  # the demo's titles are read
    tokens = torch.from_numpy(encode_texts(["red striped tee"], card.text))
    assert model(torch.randn(1, 3, 48, 48), tokens).shape == (1, taxonomy.num_outputs)


@pytest.mark.slow
def test_model_copied_to_another_lake_loads_there(trained_lake, tmp_path):
    import shutil

    lake, version = trained_lake
    shutil.copytree(lake / "models" / version, tmp_path / "other" / "models" / version)
    _, card = load_model(open_storage(tmp_path / "other"))
    assert card.version == version


@pytest.mark.slow
def test_tampered_weights_are_refused(trained_lake):
    lake, version = trained_lake
    weights = lake / "models" / version / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="do not match the sha256"):
        load_model(open_storage(lake), version)


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(trained_lake, monkeypatch, caplog):
    lake, _ = trained_lake
    cfg = TINY_TRAIN.model_copy(update=dict(epochs=1))

    def crash(*a, **k):
        raise RuntimeError("killed after the epoch")

    monkeypatch.setattr(train_mod, "evaluate_and_register", crash)
    with pytest.raises(RuntimeError, match="killed"):
        train_model(str(lake), cfg)
    assert len(open_storage(lake).list("checkpoints")) == 1
    monkeypatch.undo()
    caplog.set_level("INFO", logger="tagger.train.checkpoints")
    version = train_model(str(lake), cfg.model_copy(update=dict(epochs=2, resume=True)))
    assert "resumed from epoch 1" in caplog.text
    history = read_card(open_storage(lake), version).history
    assert [h.epoch for h in history] == [1, 2]


@pytest.mark.slow
def test_every_epoch_is_validated_and_the_best_one_registered(trained_lake):
    from tagger.train.epochs import choose_best_epoch

    lake, version = trained_lake
    storage = open_storage(lake)
    card = read_card(storage, version)
    taxonomy = card.taxonomy
    singles = {a.name for a in taxonomy.attributes if a.kind == "single"}
    for h in card.history:
        assert h.val_loss > 0 and 0 <= h.val_mAP <= 1 and 0 <= h.val_accuracy <= 1
        assert set(h.val_attribute_accuracy) == singles
        assert h.val_accuracy == pytest.approx(np.mean(list(h.val_attribute_accuracy.values())), abs=1e-5)
        assert h.weights in ("raw", "ema") and h.val_mAP == max(h.val_mAP_raw, h.val_mAP_ema)
    assert card.best_epoch == choose_best_epoch([h.model_dump() for h in card.history])
    best = card.history[card.best_epoch - 1]
    assert card.ema.registered == best.weights and card.ema.val_mAP_ema == best.val_mAP_ema
    report = storage.read_bytes(f"models/{version}/report.md").decode()
    assert "![Training curves](curves.png)" in report and f"Epoch **{card.best_epoch}** of 2" in report
    assert storage.read_bytes(f"models/{version}/curves.png")[:4] == b"\x89PNG"
    events = storage.list(f"models/{version}/tensorboard")
    assert events and all("tfevents" in e for e in events)


@pytest.mark.slow
def test_patience_stops_when_validation_map_stops_improving(trained_lake, monkeypatch):
    from tagger.train import epochs

    lake, _ = trained_lake
    maps = iter([0.5, 0.4, 0.3, 0.9])  # epoch 1 stays best; patience 2 stops after epoch 3
    real = epochs.score_epoch

    def scripted(*a, **k):
        figures, net = real(*a, **k)
        return {**figures, "val_mAP": next(maps)}, net

    monkeypatch.setattr(epochs, "score_epoch", scripted)
    version = train_model(str(lake), TINY_TRAIN.model_copy(update=dict(epochs=4, patience=2)))
    card = read_card(open_storage(lake), version)
    assert [h.epoch for h in card.history] == [1, 2, 3] and card.best_epoch == 1

"""Per-epoch validation (tagger/train/epochs.py): best-epoch selection, patience, accuracy."""

import numpy as np
import pytest

from tagger.train.epochs import attribute_accuracy, choose_best_epoch, epochs_without_improvement


def _h(*maps):
    return [dict(epoch=i + 1, train_loss=1.0, seconds=1.0, val_mAP=m) for i, m in enumerate(maps)]


@pytest.mark.parametrize("maps, best", [
    ((0.5,), 1),
    ((0.1, 0.3, 0.2), 2),
    ((0.1, 0.2, 0.3), 3),
    ((0.4, 0.4, 0.3), 1),  # a tie: the earlier epoch
    ((0.2, 0.4, 0.1, 0.4), 2),
    ((None, 0.3, None), 2),  # unscored epochs are skipped
    ((None, None), 2),  # none scored: the last epoch
])
def test_choose_best_epoch(maps, best):
    assert choose_best_epoch(_h(*maps)) == best


def test_best_epoch_is_read_from_the_epoch_field_not_the_position():
    history = [dict(epoch=3, val_mAP=0.2), dict(epoch=4, val_mAP=0.5), dict(epoch=5, val_mAP=0.1)]
    assert choose_best_epoch(history) == 4


def test_epochs_without_improvement():
    assert epochs_without_improvement(_h(0.1, 0.2, 0.3)) == 0
    assert epochs_without_improvement(_h(0.3, 0.2, 0.3)) == 2  # equal is no improvement
    assert epochs_without_improvement(_h(0.1, 0.5, 0.2)) == 1


def test_attribute_accuracy_is_top1_over_known_single_rows(tiny_taxonomy_outputs):
    taxonomy, targets, mask, logits, expected = tiny_taxonomy_outputs
    assert attribute_accuracy(taxonomy, targets, mask, logits) == expected


@pytest.fixture
def tiny_taxonomy_outputs():
    from catalog_schemas.taxonomy import load_taxonomy

    taxonomy = load_taxonomy({"name": "tiny", "attributes": [
        {"name": "color", "kind": "single", "values": ["red", "blue", "green"]},
        {"name": "style", "kind": "multi", "values": ["a", "b"]},
        {"name": "fit", "kind": "single", "values": ["slim", "loose"]},
    ]})
    # outputs: color red blue green | style a b | fit slim loose
    targets = np.array([[1, 0, 0, 1, 0, 1, 0],
                        [0, 1, 0, 0, 1, 0, 1],
                        [0, 0, 1, 0, 0, 1, 0],
                        [0, 0, 0, 0, 0, 0, 1]], dtype=np.float32)
    mask = np.ones_like(targets, dtype=bool)
    mask[3, 0:3] = False  # row 3's color is unknown
    logits = np.array([[5, 0, 0, 9, 9, 1, 0],    # color right, fit right
                       [5, 0, 0, 9, 9, 0, 1],    # color wrong, fit right
                       [0, 0, 5, 9, 9, 0, 1],    # color right, fit wrong
                       [0, 9, 0, 9, 9, 0, 1]], dtype=np.float32)  # color not counted, fit right
    return taxonomy, targets, mask, logits, {"color": round(2 / 3, 5), "fit": 0.75}


def test_without_tensorboard_one_line_says_how_to_get_it(monkeypatch, caplog, tmp_path):
    import sys

    from tagger.io.storage import open_storage
    from tagger.train.curves import EventLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    caplog.set_level("INFO", logger="tagger.train.curves")
    events = EventLog()
    events.add_epoch(dict(epoch=1, train_loss=1.0, seconds=1.0))
    events.upload(open_storage(tmp_path), "models/v1")
    events.close()
    assert "pip install 'product-tagger[tensorboard]'" in caplog.text
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_a_failed_run_leaves_no_local_event_files(trained_lake, monkeypatch):
    import glob
    import tempfile

    from tagger.train import run as train_run
    from tests.conftest import TINY_TRAIN

    def broken(*args, **kwargs):
        raise RuntimeError("the epoch broke")

    pattern = f"{tempfile.gettempdir()}/tagger-tb-*"
    before = set(glob.glob(pattern))
    monkeypatch.setattr(train_run, "train_one_epoch", broken)
    lake, _ = trained_lake
    with pytest.raises(RuntimeError, match="the epoch broke"):
        train_run.train_model(str(lake), TINY_TRAIN)
    assert set(glob.glob(pattern)) == before

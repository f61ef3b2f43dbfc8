import numpy as np
import pytest
import torch

from tagger.config import TagConfig
from tagger.model.device import resolve_precision
from tagger.data.loader import create_loader
from tagger.model.predict import predict_scores
from tagger.model.versions import load_model
from tagger.io.storage import open_storage


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") == "fp32" and resolve_precision(cpu, "bf16") == "bf16"
    assert resolve_precision(cpu, "auto") in ("fp32", "bf16")
    with pytest.raises(ValueError):
        TagConfig(precision="int8")


@pytest.mark.slow
def test_bf16_scores_match_fp32_and_decisions_agree(trained_lake):
    """bf16 autocast (fast on CPUs with AMX and on GPUs) gives fp32's tags up to its rounding."""
    from tagger.data.dataset import ProductImages
    from tagger.data.transforms import BatchNormalize, create_transforms
    from tagger.lake import read_products

    lake, version = trained_lake
    model, card = load_model(open_storage(lake), version)
    products = read_products(open_storage(lake)).to_pylist()
    d = card.data_config
    ds = ProductImages(str(lake), [p["image_shard"] for p in products], [p["image_hash"] for p in products],
                       create_transforms(d.image_size, train=False), texts=[p["text"] for p in products],
                       text_config=card.text)
    cpu = torch.device("cpu")
    norm = BatchNormalize.from_config(d, reuse=True)
    fp32 = predict_scores(model, create_loader(ds, 16, 0), cpu, precision="fp32", normalize=norm)
    bf16 = predict_scores(model, create_loader(ds, 16, 0), cpu, precision="bf16", normalize=norm)
    diff = np.abs(fp32 - bf16)
    assert diff.max() < 0.03  # bf16 keeps 8 bits of mantissa
    thresholds = np.array([v for vals in card.thresholds.values() for v in vals.values()])
    flipped = (fp32 >= thresholds) != (bf16 >= thresholds)
    # A decision flips only where the fp32 score is within bf16's error of its threshold.
    # (This 2-epoch model's scores crowd its thresholds; the agreement rate of a real
    # model is measured in benchmarks/, not here.)
    assert np.all(np.abs(fp32 - thresholds)[flipped] <= diff[flipped])
    assert flipped.mean() < 0.05


class _CvThreads(torch.utils.data.Dataset):
    """Reports the OpenCV thread count of the process that loads each item."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        import cv2

        return torch.tensor([cv2.getNumThreads(), torch.utils.data.get_worker_info() is not None])


def test_loader_workers_run_opencv_single_threaded():
    from tagger.data.loader import create_loader

    loader = create_loader(_CvThreads(), batch_size=1, workers=1)
    seen = torch.cat(list(loader))
    assert seen[:, 1].all(), "items were not loaded by a worker"
    assert (seen[:, 0] == 1).all()


def test_model_input_normalises_uint8_and_passes_float_through():
    from tagger.data.transforms import BatchNormalize
    from tagger.data.transforms import model_input

    cpu = torch.device("cpu")
    images = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    with pytest.raises(TypeError, match="normalize="):
        model_input(images, None, cpu)  # raw pixels would reach the model
    x = model_input(images, BatchNormalize([0.5] * 3, [0.25] * 3), cpu, channels_last=True)
    assert x.shape == (2, 3, 4, 4) and torch.all(x == 2.0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    f = torch.randn(2, 3, 4, 4)
    y = model_input(f, None, cpu, channels_last=True)
    assert torch.equal(y, f) and y.is_contiguous(memory_format=torch.channels_last)

"""The text warm-up alone: how well the text branch reads the titles after N epochs.

Fits a fused model's text branch and its own head with `warm_up_text` (what a training run
does first, tagger/train/text_warmup.py) on the training split of a lake that holds the
real catalog (the quality benchmark's `--workdir` keeps it at WORKDIR/lake), for each
epoch count given, and prints the validation split's mean and per-attribute top-1
accuracy and macro-F1 (argmax, over the values present) and mAP: how
`TrainConfig.text_warmup_epochs` was chosen. `--text FIELD=VALUE` screens other text
features (catalog_schemas.card.TextConfig). No image is decoded.

    .venv/bin/python -m benchmarks.text_warmup --lake /tmp/bq/lake --epochs 3,6,10
    .venv/bin/python -m benchmarks.text_warmup --lake /tmp/bq/lake --epochs 5 --text char_ngrams=2,3,4,5 --text max_tokens=192
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from catalog_schemas.card import TextConfig  # noqa: E402
from tagger.config import TrainConfig  # noqa: E402
from tagger.data.text import encode_texts  # noqa: E402
from tagger.io.storage import open_storage  # noqa: E402
from tagger.labels import single_slices  # noqa: E402
from tagger.model.text import ImageTextModel  # noqa: E402
from tagger.quality.evaluation import compute_evaluation  # noqa: E402
from tagger.train.epochs import attribute_accuracy, mean_ap, ranked  # noqa: E402
from tagger.train.loop import TrainLabels, create_fit  # noqa: E402
from tagger.train.losses import compute_pos_weight  # noqa: E402
from tagger.train.run import resolve_config  # noqa: E402
from tagger.train.split import load_training_data, split_products  # noqa: E402
from tagger.train.text_warmup import warm_up_text  # noqa: E402


def screen(lake: str, epochs: int, backbone: str, text_options: dict | None = None) -> dict:
    """Validation figures of the text branch after `epochs` warm-up epochs (the defaults
    otherwise); `text_options` override TextConfig fields (char_ngrams, max_tokens, dim, ..)."""
    torch.manual_seed(0)
    data = load_training_data(open_storage(lake))
    if data.texts is None:
        raise SystemExit(f"The products of {lake} have no text: map the title and ingest again.")
    config = resolve_config(TrainConfig(backbone=backbone, text_warmup_epochs=epochs))
    split = split_products(data.targets, config.val_fraction, config.test_fraction, config.seed)
    train, val = split.train, split.validation
    text = TextConfig(**{"buckets": config.text_buckets, "dim": config.text_dim, **(text_options or {})})
    model = ImageTextModel(None, text, data.taxonomy.num_outputs)
    pos_weight = compute_pos_weight(data.targets[train], data.mask[train], mode=config.pos_weight,
                                    max_weight=config.pos_weight_max)
    fit = create_fit(model, config, 1, torch.from_numpy(pos_weight), None, torch.device("cpu"),
                     labels=TrainLabels(data.taxonomy, data.targets[train], data.mask[train]))
    t0 = time.perf_counter()
    losses = warm_up_text(model, [data.texts[i] for i in train], data.targets[train], data.mask[train], fit, config)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        logits = model(None, torch.from_numpy(encode_texts([data.texts[i] for i in val], text))).numpy()
    accuracy = attribute_accuracy(data.taxonomy, data.targets[val], data.mask[val], logits)
    f1 = macro_f1(data.taxonomy, data.targets[val], data.mask[val], logits)
    return dict(epochs=epochs, text=text.model_dump(mode="json"), seconds=round(seconds, 1), losses=losses,
                mean_top1=round(float(np.mean(list(accuracy.values()))), 4),
                mean_macro_f1=round(float(np.mean(list(f1.values()))), 4),
                mAP=round(mean_ap(data.targets[val], data.mask[val], ranked(logits, fit.heads)), 4),
                top1=accuracy, macro_f1=f1)


def macro_f1(taxonomy, targets: np.ndarray, mask: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Macro-F1 of the argmax per `single` attribute, as the quality benchmark computes it
    (compute_evaluation with the softmax slices decided by argmax): the rare values count as
    much as the common ones, what top-1 accuracy alone does not show."""
    heads = tuple(single_slices(taxonomy).values())
    _, metrics = compute_evaluation(taxonomy, targets, mask, logits,
                                    np.zeros(targets.shape[1], np.float32), argmax_slices=heads)
    return {name: round(m["macro_f1"], 5) for name, m in metrics["per_attribute"].items()
            if name in single_slices(taxonomy) and m.get("macro_f1") is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lake", required=True, help="a lake whose products have titles")
    p.add_argument("--epochs", default="3,6,10", help="comma-separated epoch counts")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="whose lr and batch defaults to use")
    p.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TextConfig field, e.g. char_ngrams=2,3,4,5 or max_tokens=192 (repeatable)")
    a = p.parse_args()
    options = dict(text_option(o) for o in a.text)
    for epochs in (int(e) for e in a.epochs.split(",")):
        print(json.dumps(screen(a.lake, epochs, a.backbone, options)), flush=True)


def text_option(option: str) -> tuple[str, object]:
    """'char_ngrams=2,3' -> ('char_ngrams', (2, 3)); 'dim=128' -> ('dim', 128)."""
    name, sep, value = option.partition("=")
    if not sep or name not in TextConfig.model_fields:
        raise SystemExit(f"--text {option!r}: expected FIELD=VALUE with FIELD one of {', '.join(TextConfig.model_fields)}")
    values = tuple(int(v) for v in value.split(","))
    return name, values if name == "char_ngrams" else values[0]


if __name__ == "__main__":
    main()

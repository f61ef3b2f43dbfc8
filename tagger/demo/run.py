"""The demo: a generated catalog -> ingest -> train -> tag, and a summary a person can read.

`tagger demo` calls the library directly; `make demo` runs the same steps as Prefect
flows (flows/demo.py). Both end with `summarise`.
"""

from __future__ import annotations

from pathlib import Path

from catalog_schemas.taxonomy import shipped_taxonomy
from tagger.config import TrainConfig
from catalog_schemas.card import ModelCard
from tagger.model.versions import read_card
from tagger.io.storage import open_storage
from tagger.lake import LATEST_PATH

DEMO_TAXONOMY = str(shipped_taxonomy("demo"))

# Measured on 2 CPU cores with 1000 generated products: ~100 s of training from random init,
# validation accuracy 0.96 article type, 1.00 colour, 0.82 pattern, 0.90 sleeve length.
# timm's tiny test EfficientNet beat mobilenetv3_small here (faster and more accurate).
DEMO_PRODUCTS = 1000
DEMO_TRAIN = TrainConfig(
    backbone="test_efficientnet", image_size=96, epochs=15, batch_size=32, lr=3e-3,
    warmup_epochs=1, pretrained=False, workers=1, log_every=10,
    pos_weight="linear",  # what the figures above were measured with
)


def chance_accuracy(card: ModelCard, attribute: str) -> float | None:
    """Accuracy of always answering the most frequent value (on the split the card leads with)."""
    per_value = card.headline[1]["per_value"].get(attribute, {})
    supports = [v["support"] for v in per_value.values()]
    known = max((v["known"] for v in per_value.values()), default=0)
    return max(supports) / known if known and supports else None


def summarise(lake: str, version: str) -> str:
    """What was made, where it is, how good the model is, and how to read the tags."""
    storage = open_storage(lake)
    card = read_card(storage, version)
    split, m = card.headline
    products = card.data.test if split == "test" else card.data.validation
    lines = [
        "",
        f"model      {storage.url(f'models/{version}')}  ({card.backbone}, {card.image_size} px, "
        f"reads {'the photo and the title' if card.inputs == 'image+text' else card.inputs})",
        f"tags       {storage.url('tags/latest/')}  (history: {storage.url('tags/history/')})",
        f"rejects    {storage.url('catalog/rejects/')}",
        "",
        f"{split} ({products} products): micro-F1 {m['micro_f1']:.3f}  "
        f"macro-F1 {m['macro_f1']:.3f}  mAP {m['mAP']:.3f}  Hamming loss {m['hamming_loss']:.3f}",
        f"{'attribute':<16}{'accuracy':>10}{'chance':>10}{'macro-F1':>10}",
    ]
    for attr, am in m["per_attribute"].items():
        acc, chance = am.get("accuracy"), chance_accuracy(card, attr)
        fmt = lambda x: f"{x:>10.3f}" if x is not None else f"{'-':>10}"
        lines.append(f"{attr:<16}{fmt(acc)}{fmt(chance) if acc is not None else fmt(None)}{fmt(am['macro_f1'])}")
    latest = storage.url(LATEST_PATH)
    lines += [
        "",
        "read the tags with DuckDB:",
        f"  duckdb -c \"SELECT attribute, value, count(*) AS products, round(avg(score), 3) AS "
        f"avg_score FROM '{latest}' GROUP BY ALL ORDER BY attribute, products DESC\"",
    ]
    return "\n".join(lines)


def demo_paths(lake: str | None) -> tuple[str, Path]:
    lake = lake or "demo/lake"
    return lake, Path(lake).parent / "catalog"

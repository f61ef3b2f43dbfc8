"""The shared real catalog (../shared/datasets/fashion-product-images-small), when present."""

import pandas as pd
import pytest

from catalog_schemas.taxonomy import load_taxonomy, shipped_taxonomy
from tagger.ingest.run import ingest_catalog
from tagger.lake import read_products
from tagger.io.storage import open_storage
from tests.conftest import SHARED_CATALOG

pytestmark = pytest.mark.skipif(
    not (SHARED_CATALOG / "styles.csv").exists(), reason="shared real catalog not present"
)
TAXONOMY = shipped_taxonomy("fashion_product_images")


def test_taxonomy_covers_every_label_of_the_catalog():
    tax = load_taxonomy(TAXONOMY)
    df = pd.read_csv(SHARED_CATALOG / "styles.csv", dtype=str, keep_default_na=False)
    for attr in tax.attributes:
        values = set(df[attr.source_column]) - {""}
        assert values <= set(attr.values), (attr.name, values - set(attr.values))


def test_ingest_a_slice_of_the_real_catalog(tmp_path):
    """300 real products: every row is accepted and unknown labels stay unknown."""
    import shutil

    df = pd.read_csv(SHARED_CATALOG / "styles.csv", dtype=str, keep_default_na=False).head(300)
    df.to_csv(tmp_path / "styles.csv", index=False)
    (tmp_path / "images").mkdir()
    for pid in df["id"]:
        shutil.copy(SHARED_CATALOG / "images" / f"{pid}.jpg", tmp_path / "images")
    result = ingest_catalog(str(tmp_path / "styles.csv"), TAXONOMY, str(tmp_path / "lake"))
    assert (result.products, result.rejected) == (300, 0)
    products = read_products(open_storage(tmp_path / "lake")).to_pylist()
    season_known = sum(1 for p in products if "season" in dict(p["labels"]))
    assert season_known == (df["season"] != "").sum() < 300

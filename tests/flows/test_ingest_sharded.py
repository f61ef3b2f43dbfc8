"""The ingest-sharded flow on a real Dask cluster (`dask scheduler` + two `dask worker`
processes on loopback, tests/dask_cluster.py) writes the products table, rejects and image
shards of a one-process ingest of the same export, on a first ingest, a re-ingest with
changed images, and a re-run that changes nothing.

What must differ between the two runs, and is left out of the comparison: the run id
(products' ingest_run_id, rejects' run_id) and the run's clock (products' first_seen and
updated_at, rejects' rejected_at). Everything else is compared, shards byte for byte.
"""

from __future__ import annotations

import pytest
from PIL import Image
from prefect.testing.utilities import prefect_test_harness

from catalog_schemas.tables import PRODUCTS, REJECTS
from tagger.config import IngestConfig
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import open_storage, read_table
from tagger.lake import IMAGES_PREFIX, PRODUCTS_PATH, REJECTS_PATH, STAGING_PREFIX
from tests.conftest import DEMO_TAXONOMY
from tests.ingest.test_chunks import _export, _read, _write

pytestmark = pytest.mark.slow

RUN_COLUMNS = {"products": ["ingest_run_id", "first_seen", "updated_at"], "rejects": ["run_id", "rejected_at"]}
# chunks of 8 rows, parts of 3, shards of 5: every boundary falls somewhere else
CONFIG = IngestConfig(chunk_size=8, shard_size=5, max_reject_fraction=0.5, workers=2)


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _tables(lake) -> dict:
    storage = open_storage(lake)
    products = read_table(storage, PRODUCTS_PATH, PRODUCTS).sort_by("product_id")
    rejects = read_table(storage, REJECTS_PATH, REJECTS).sort_by("row_number")
    return dict(products=products.drop_columns(RUN_COLUMNS["products"]),
                rejects=rejects.drop_columns(RUN_COLUMNS["rejects"]),
                shards={p: (lake / p).read_bytes() for p in storage.list(IMAGES_PREFIX) if p.endswith(".parquet")})


def _counts(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("run_id", "lake", "seconds", "rejects_history")}


def _sharded(dask_address: str):
    from prefect_dask import DaskTaskRunner

    from flows.ingest_sharded import ingest_sharded

    return ingest_sharded.with_options(task_runner=DaskTaskRunner(address=dask_address))


def _on_workers(dask_address: str, run) -> tuple[set[str], dict]:
    """Run `run()`: the workers the cluster ran its tasks on, and what `run` returned."""
    from distributed import Client, get_task_stream

    with Client(dask_address) as client, get_task_stream(client) as stream:
        result = run()
    assert result is not None
    return {t["worker"] for t in stream.data}, result


def test_ingest_sharded_on_a_cluster_writes_the_tables_of_one_process(prefect_api, dask_address, tmp_path):
    export = _export(tmp_path, "csv")  # duplicates far apart, bad rows, two products sharing an image
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    flow = _sharded(dask_address)

    def night(name: str) -> tuple[dict, dict, set[str]]:
        a = ingest_catalog(str(export), DEMO_TAXONOMY, str(one), CONFIG, run_id=f"one-{name}").to_dict()
        workers, b = _on_workers(dask_address, lambda: flow(str(export), DEMO_TAXONOMY, str(sharded),
                                                            part_rows=3, config=CONFIG))
        assert b["run_id"].startswith("ingest-") and b["run_id"] != "ingest-local"
        return a, b, workers

    a, b, workers = night("1")
    assert _counts(a) == _counts(b) and (b["products"], b["rejected"]) == (24, 5)
    assert len(b["shards_written"]) == 5 and len(workers) == 2  # both workers took parts
    assert _tables(one) == _tables(sharded)
    assert not (sharded / STAGING_PREFIX).exists() or not list((sharded / STAGING_PREFIX).rglob("*.parquet"))

    # the next night: a product gone, two images redrawn, one product showing another's image
    df = _read(export)
    df.loc[df.id == "P00003", "image"] = df[df.id == "P00004"].iloc[0]["image"]
    _write(df[df.id != "P00011"], export)
    for pid, colour in (("P00012", "green"), ("P00013", "navy")):
        Image.new("RGB", (40, 40), colour).save(export.parent / "images" / f"{pid}.jpg")
    a, b, _ = night("2")
    # only the changed rows' images (and the two rejected rows', which have no product) are read
    assert _counts(a) == _counts(b) and (b["changed"], b["removed"], b["images_stored"]) == (3, 1, 2)
    assert b["images_fetched"] == 3 + 2
    assert _tables(one) == _tables(sharded)

    # the same export again: idempotent, nothing stored, the products table not rewritten
    before = {p: p.stat().st_mtime_ns for p in (sharded / "catalog").rglob("*.parquet") if "rejects" not in str(p)}
    a, b, _ = night("3")
    assert _counts(a) == _counts(b) and (b["images_stored"], b["products_written"], b["new"], b["changed"]) == (0, False, 0, 0)
    assert before == {p: p.stat().st_mtime_ns for p in (sharded / "catalog").rglob("*.parquet")
                      if "rejects" not in str(p)}
    assert _tables(one) == _tables(sharded)


def test_ingest_sharded_on_a_cluster_gives_one_process_several_images(prefect_api, dask_address, tmp_path):
    """Products with several images (others' images, bad extra images, a bad first image):
    the same products (more_images), rejects (product_kept) and shards as one process."""
    import yaml

    from tests.ingest.test_multi_image import MULTI, _multi_export

    export, taxonomy = _multi_export(tmp_path), tmp_path / "multi.yaml"
    taxonomy.write_text(yaml.safe_dump(MULTI.to_dict()))
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    a = ingest_catalog(str(export), str(taxonomy), str(one), CONFIG, run_id="one").to_dict()
    workers, b = _on_workers(dask_address, lambda: _sharded(dask_address)(
        str(export), str(taxonomy), str(sharded), part_rows=3, config=CONFIG))
    assert _counts(a) == _counts(b) and (b["products"], b["rejected"], b["images_rejected"]) == (24, 5, 3)
    assert len(workers) == 2 and _tables(one) == _tables(sharded)
    assert _tables(one)["products"]["more_images"].null_count < 24

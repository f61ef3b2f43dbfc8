"""The ingest run's artifact: counts and rejects by reason, rendered from IngestResult."""

from flows._artifacts import render_ingest_summary
from tagger.ingest.run import IngestResult


def test_ingest_summary_shows_counts_rejects_and_the_history_file():
    result = IngestResult(run_id="ingest-7", catalog="s3://e/catalog.csv", lake="s3://l", rows=63,
                          products=60, new=2, changed=1, removed=4, rejected=3, images_stored=3,
                          products_written=True, reject_reasons={"missing_file": 1, "unknown_label": 2},
                          rejects_history="s3://l/catalog/rejects/run_date=2026-12-02/ingest-7.parquet")
    md = render_ingest_summary(result.to_dict())
    assert "63 rows of `s3://e/catalog.csv` -> **60 products** (2 new, 1 changed, 4 removed)" in md
    assert "## Rejected rows: 3" in md
    assert md.index("| unknown_label | 2 |") < md.index("| missing_file | 1 |")
    assert "`s3://l/catalog/rejects/run_date=2026-12-02/ingest-7.parquet`" in md


def test_ingest_summary_counts_truncated_texts_only_when_there_are_some():
    result = IngestResult(run_id="ingest-8", catalog="c.csv", lake="l", rows=3, products=3,
                          products_written=True, texts_truncated=2)
    assert "2 product texts were over the length limit and cut at a word." in render_ingest_summary(result.to_dict())
    result.texts_truncated = 0
    assert "length limit" not in render_ingest_summary(result.to_dict())


def test_ingest_summary_counts_images_left_out_only_when_there_are_some():
    result = IngestResult(run_id="ingest-9", catalog="c.csv", lake="l", rows=3, products=3,
                          products_written=True, images_rejected=2, reject_reasons={"not_an_image": 2})
    md = render_ingest_summary(result.to_dict())
    assert "2 images were left out of products ingested with their other images" in md
    result.images_rejected = 0
    assert "left out" not in render_ingest_summary(result.to_dict())

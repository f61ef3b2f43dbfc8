"""How a task shows a product's image: a link, a presigned S3 URL, or the lake's own JPEG."""

from __future__ import annotations

import base64

import httpx

from tagger.data.shards import ShardCache
from tagger.io.storage import open_storage
from tagger.lake import read_products
from tagger.review.push import image_url


def test_a_local_image_is_the_lakes_jpeg_as_a_data_uri_and_https_stays_a_link(trained_lake):
    lake = str(trained_lake[0])
    storage = open_storage(lake)
    product = read_products(storage).to_pylist()[0]
    cache = ShardCache(lake)
    url = image_url(storage, cache, product, 60)
    head, _, body = url.partition(",")
    assert head == "data:image/jpeg;base64"
    assert base64.b64decode(body) == cache.get(product["image_shard"], product["image_hash"])
    linked = {**product, "image_uri": "https://cdn.example/p.jpg"}
    assert image_url(storage, cache, linked, 60) == "https://cdn.example/p.jpg"


def test_an_s3_image_is_a_presigned_url_that_serves_it(s3_bucket, trained_lake):
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3").put_object(Bucket=bucket, Key="images/p1.jpg", Body=b"\xff\xd8jpeg bytes")
    lake = str(trained_lake[0])
    product = {**read_products(open_storage(lake)).to_pylist()[0], "image_uri": f"{s3_bucket}/images/p1.jpg"}
    url = image_url(open_storage(lake), ShardCache(lake), product, 300)
    assert url.startswith("http") and "Signature" in url
    assert httpx.get(url, timeout=10).content == b"\xff\xd8jpeg bytes"


def test_products_are_chosen_for_review_issues_and_a_sample_of_published_ones():
    import pyarrow as pa

    from tagger.review.push import select_products

    latest = pa.table({"product_id": ["a", "a", "b", "c", "d", "e"],
                       "needs_review": [False, True, False, False, False, False],
                       "source": ["model", "model", "model", "curated", "model", "model"]})
    issues = pa.table({"product_id": ["b", "a"]})
    assert select_products(latest, None, 0, 0) == {"a": "needs_review"}
    assert select_products(latest, issues, 0, 0) == {"a": "needs_review", "b": "label_issue"}
    sampled = select_products(latest, issues, 5, 0)  # published by the model: d and e only
    assert sampled == {"a": "needs_review", "b": "label_issue", "d": "sample", "e": "sample"}
    one = select_products(latest, None, 1, 0)
    assert len(one) == 2 and set(one) - {"a"} <= {"b", "d", "e"} and one == select_products(latest, None, 1, 0)

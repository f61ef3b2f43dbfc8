"""Ingest throughput from a loopback S3 endpoint with added per-request latency:
parallel fetching (IngestConfig.workers=16) vs sequential (workers=1), from one run.

    .venv/bin/python -m benchmarks.ingest_s3 --products 400 --latency-ms 20

Starts `rclone serve s3` (tests/s3server.py; moto where rclone is missing) on 127.0.0.1,
puts a generated catalog and its images in a bucket, then ingests it twice through a
FaultProxy that holds every request for --latency-ms before forwarding it (what a
same-region S3 round trip costs), into two fresh lakes on the same endpoint: once with
one worker, once with --workers. Prints a JSON summary and a Markdown table row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog_schemas.taxonomy import shipped_taxonomy  # noqa: E402
from tagger.config import IngestConfig  # noqa: E402
from tagger.ingest.run import ingest_catalog  # noqa: E402
from tagger.demo.sample import generate_catalog  # noqa: E402
from tagger.io.storage import open_storage  # noqa: E402
from tests.s3server import FaultProxy, S3Server  # noqa: E402


def run(products: int, latency_ms: float, workers: int, image_size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        server = S3Server(Path(tmp) / "s3").start()
        os.environ.update(server.env)
        try:
            import boto3

            boto3.client("s3").create_bucket(Bucket="bench")
            export = generate_catalog(Path(tmp) / "export", n_products=products, seed=0,
                                      image_size=image_size)
            bucket = open_storage("s3://bench/exports")
            for path in export.parent.rglob("*"):
                if path.is_file():
                    bucket.upload(path, path.relative_to(export.parent).as_posix())
            image_bytes = sum(p.stat().st_size for p in (export.parent / "images").glob("*"))

            proxy = FaultProxy(server.port, latency=latency_ms / 1000)
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            taxonomy = str(shipped_taxonomy("demo"))
            runs = {}
            for label, n in (("sequential", 1), ("parallel", workers)):
                proxy.inject("pass", count=0)  # resets the request counter
                t0 = time.perf_counter()
                result = ingest_catalog("s3://bench/exports/catalog.csv", taxonomy,
                                        f"s3://bench/lake-{label}", IngestConfig(workers=n))
                seconds = time.perf_counter() - t0
                runs[label] = dict(workers=n, seconds=round(seconds, 2),
                                   images_per_s=round(result.images_fetched / seconds, 1),
                                   products=result.products, s3_requests=proxy.requests)
            proxy.close()
        finally:
            server.stop()
    return dict(
        products=products, image_size=image_size, image_mb=round(image_bytes / 1e6, 1),
        latency_ms=latency_ms, endpoint=server.kind, cpus=os.cpu_count(),
        python=platform.python_version(), **runs,
        speedup=round(runs["sequential"]["seconds"] / runs["parallel"]["seconds"], 2),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--products", type=int, default=400)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    r = run(args.products, args.latency_ms, args.workers, args.image_size)
    print(json.dumps(r, indent=2))
    s, q = r["sequential"], r["parallel"]
    print(f"| {r['products']} products, {r['image_size']} px, +{r['latency_ms']:g} ms/request "
          f"({r['endpoint']}) | {s['seconds']} s ({s['images_per_s']} img/s) | {q['seconds']} s "
          f"({q['images_per_s']} img/s) | {r['speedup']}x |")


if __name__ == "__main__":
    main()

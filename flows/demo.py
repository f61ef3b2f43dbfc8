"""`make demo`: generate a sample catalog, then run the ingest, train and tag flows on it
in Prefect's ephemeral mode (no server to start) on the CPU."""

from __future__ import annotations

import argparse
import logging

from prefect import flow

from flows.ingest import ingest
from flows.tag import tag
from flows.train import train
from tagger.demo.run import DEMO_PRODUCTS, DEMO_TAXONOMY, DEMO_TRAIN, demo_paths, summarise
from tagger.demo.sample import generate_catalog


@flow(name="demo")
def demo(lake: str = "demo/lake", products: int = DEMO_PRODUCTS) -> str:
    lake, catalog_dir = demo_paths(lake)
    catalog = generate_catalog(catalog_dir, n_products=products)
    ingest(str(catalog), DEMO_TAXONOMY, lake)
    version = train(lake, DEMO_TRAIN)
    tag(lake, model_version=version)
    return version


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", default="demo/lake")
    parser.add_argument("--products", type=int, default=DEMO_PRODUCTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    version = demo(args.lake, args.products)
    print(summarise(args.lake, version))  # the demo's output is this summary

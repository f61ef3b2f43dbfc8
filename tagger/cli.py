"""`tagger ...`: a thin command line over the same functions the Prefect flows call."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
from datetime import date

from tagger.model.backbones import BACKBONES

log = logging.getLogger("tagger")


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_ingest(args) -> int:
    from tagger.config import IngestConfig, load_config
    from tagger.ingest.run import ingest_catalog

    config = load_config(IngestConfig, args.config, image_max_side=args.image_max_side,
                         workers=args.workers)
    result = ingest_catalog(args.catalog, args.taxonomy, args.lake, config, run_id=args.run_id)
    _print_json(result.to_dict() | {"shards_written": len(result.shards_written)})
    return 0


def cmd_train(args) -> int:
    from tagger.config import TrainConfig, load_config
    from tagger.train.run import train_model

    config = load_config(
        TrainConfig, args.config, backbone=args.backbone, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weights=args.weights,
        pretrained=args.pretrained, workers=args.workers, device=args.device,
        resume=args.resume or None, seed=args.seed, pos_weight=args.pos_weight, loss=args.loss,
        ema_decay=args.ema_decay, min_precision=args.min_precision, calibrate=args.calibrate,
        thresholds=args.thresholds,
    )
    version = train_model(args.lake, config)
    if version:  # rank 0 of a distributed run
        sys.stdout.write(version + "\n")
    return 0


def cmd_tag(args) -> int:
    from tagger.config import TagConfig, load_config
    from tagger.tag.run import tag_catalog

    # Everything imported so far (torch, timm, onnx, pyarrow: millions of objects) lives as
    # long as the process; freezing it keeps the cyclic GC from walking it again in every
    # full collection: 0.95 -> 0.18 s for an incremental run of 20 products, and a 20,000-
    # product incremental run 6.8% -> 5.7% of a full one (benchmarks/nightly_incremental.py
    # --gc-freeze, benchmarks/README.md).
    gc.freeze()
    config = load_config(TagConfig, args.config, batch_size=args.batch_size, workers=args.workers,
                         device=args.device, runtime=args.runtime)
    result = tag_catalog(args.lake, model_version=args.model, full=args.full, run_id=args.run_id,
                         run_date=args.run_date, config=config)
    _print_json(result.to_dict())
    return 0


def cmd_evaluate(args) -> int:
    from tagger.config import TagConfig, load_config
    from tagger.quality.evaluate import evaluate_model

    config = load_config(TagConfig, None, batch_size=args.batch_size, workers=args.workers,
                         device=args.device, runtime=args.runtime)
    _print_json(evaluate_model(args.lake, args.catalog, model_version=args.model,
                               taxonomy=args.taxonomy, name=args.name, config=config))
    return 0


def cmd_convert_weights(args) -> int:
    from tagger.model.weights import convert_weights

    sys.stdout.write(str(convert_weights(args.source, args.backbone, args.out)) + "\n")
    return 0


def cmd_demo(args) -> int:
    from tagger.demo.run import DEMO_PRODUCTS, DEMO_TAXONOMY, DEMO_TRAIN, demo_paths, summarise
    from tagger.ingest.run import ingest_catalog
    from tagger.demo.sample import generate_catalog
    from tagger.tag.run import tag_catalog
    from tagger.train.run import train_model

    lake, catalog_dir = demo_paths(args.lake)
    products = args.products or DEMO_PRODUCTS
    catalog = generate_catalog(catalog_dir, n_products=products, seed=args.seed)
    log.info("generated %d products at %s", products, catalog)
    ingest_catalog(str(catalog), DEMO_TAXONOMY, lake)
    config = DEMO_TRAIN.model_copy(update={"epochs": args.epochs} if args.epochs else {})
    version = train_model(lake, config)
    tag_catalog(lake, model_version=version)
    sys.stdout.write(summarise(lake, version) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tagger", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate a sample catalog, ingest, train and tag it")
    d.add_argument("--lake", default=None, help="lake folder (default demo/lake; catalog beside it)")
    d.add_argument("--products", type=int, help="products to generate (default 1000)")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default 15)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("ingest", help="catalog export -> products, image shards, rejects")
    i.add_argument("catalog", help="CSV, JSON Lines or Parquet export (local path or s3://)")
    i.add_argument("--taxonomy", required=True, help="taxonomy YAML (catalog_schemas/taxonomies/)")
    i.add_argument("--lake", required=True, help="lake root: a folder or s3://bucket/prefix")
    i.add_argument("--config", help="YAML with IngestConfig fields")
    i.add_argument("--image-max-side", type=int, help="longest side of stored images (default 512)")
    i.add_argument("--workers", type=int, help="image fetch/decode threads (default 8)")
    i.add_argument("--run-id")
    i.set_defaults(func=cmd_ingest)

    t = sub.add_parser("train", help="split, train, tune thresholds, evaluate, register a model")
    t.add_argument("--lake", required=True)
    t.add_argument("--config", help="YAML with TrainConfig fields (flags override it)")
    t.add_argument("--backbone", choices=list(BACKBONES), help="default efficientnet_b4")
    t.add_argument("--image-size", type=int, help="default: the backbone's")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weights", help="backbone weights file, local or s3:// (safetensors or state dict)")
    t.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from the hub's pretrained weights (default yes)")
    t.add_argument("--workers", type=int, help="DataLoader workers")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    t.add_argument("--pos-weight", choices=["linear", "sqrt", "none"], help="BCE pos_weight (default linear)")
    t.add_argument("--loss", choices=["bce", "focal", "asl"], help="default bce")
    t.add_argument("--ema-decay", type=float, help="EMA of the weights (default 0.9998; 0 turns it off)")
    t.add_argument("--thresholds", choices=["max_f1", "fixed"], help="default max_f1; fixed: 0.5")
    t.add_argument("--min-precision", type=float,
                   help="precision target: auto-publish threshold per value, needs_review below it")
    t.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="temperature scaling on the validation split (default on)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("tag", help="tag new and changed products, write tag tables")
    g.add_argument("--lake", required=True)
    g.add_argument("--model", help="model version (default: newest)")
    g.add_argument("--full", action="store_true", help="re-tag every product")
    g.add_argument("--config", help="YAML with TagConfig fields")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--workers", type=int)
    g.add_argument("--device", choices=["auto", "cpu", "cuda"])
    g.add_argument("--runtime", choices=["auto", "torch", "onnx"],
                   help="inference runtime (default auto: ONNX Runtime fp32 on the CPU, torch on CUDA)")
    g.add_argument("--run-id", help="re-using a run id replaces that run's output")
    g.add_argument("--run-date", type=date.fromisoformat, help="YYYY-MM-DD (default today, UTC)")
    g.set_defaults(func=cmd_tag)
    e = sub.add_parser("evaluate", help="evaluate a model on a labelled catalog it never saw")
    e.add_argument("catalog", help="labelled catalog export (CSV, JSON Lines, Parquet; local or s3://)")
    e.add_argument("--lake", required=True)
    e.add_argument("--model", help="model version (default: newest)")
    e.add_argument("--taxonomy", help="taxonomy YAML whose `catalog:` mapping fits the export "
                   "(default: the model's own)")
    e.add_argument("--name", help="evaluation name (default: export name + time)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--workers", type=int)
    e.add_argument("--device", choices=["auto", "cpu", "cuda"])
    e.add_argument("--runtime", choices=["auto", "torch", "onnx"],
                   help="inference runtime (default auto: ONNX Runtime fp32 on the CPU, torch on CUDA)")
    e.set_defaults(func=cmd_evaluate)

    w = sub.add_parser("convert-weights",
                       help="map a third-party ImageNet checkpoint onto a backbone (for --weights)")
    w.add_argument("source", help="checkpoint file (local or s3://): torch state dict or safetensors")
    w.add_argument("--backbone", required=True, choices=list(BACKBONES))
    w.add_argument("--out", required=True, help="safetensors file to write")
    w.set_defaults(func=cmd_convert_weights)
    return p


def _exit_on_sigterm(signum, frame):
    # Schedulers stop a run with SIGTERM (Prefect cancellation, Kubernetes, systemd). Leaving
    # through SystemExit runs every `finally`: lake locks are released, temp files removed.
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_signal_handlers()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, LookupError, RuntimeError) as e:
        if args.verbose:
            raise
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`tagger ...`: a thin command line over the same functions the Prefect flows call."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
import types
from datetime import date
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

# Light on purpose (pydantic, yaml): `tagger --help` builds every parser without torch or
# timm; the cmd_* functions import the heavy modules they need.
from tagger.config import FROM_BACKBONE, IngestConfig, TagConfig, TrainConfig, load_config
from tagger.backbones import BACKBONES
from tagger.io.base import OS_HINTS, StorageError, os_errno, storage_error

log = logging.getLogger("tagger")

# Exit codes (docs/operations.md#storage-errors-and-exit-codes): 0 done; 2 a bad input,
# config or state of the lake (the message says what to change); 3 the storage refused (disk
# full, permission denied, read-only, I/O error, S3 quota or access): fix it, re-run as it was.
EXIT_ERROR = 2
EXIT_STORAGE = 3


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_ingest(args) -> int:
    config = config_from_args(IngestConfig, args)
    from tagger.ingest.run import ingest_catalog

    result = ingest_catalog(args.catalog, args.taxonomy, args.lake, config, run_id=args.run_id)
    _print_json(result.to_dict() | {"shards_written": len(result.shards_written)})
    return 0


def cmd_train(args) -> int:
    config = config_from_args(TrainConfig, args)
    from tagger.train.run import train_model

    version = train_model(args.lake, config)
    if version:  # rank 0 of a distributed run
        sys.stdout.write(version + "\n")
    return 0


def cmd_tag(args) -> int:
    config = config_from_args(TagConfig, args)
    from tagger.tag.run import tag_catalog

    # Everything imported so far (torch, timm, onnx, pyarrow: millions of objects) lives as
    # long as the process; freezing it keeps the cyclic GC from walking it again in every
    # full collection: 0.95 -> 0.18 s for an incremental run of 20 products, and a 20,000-
    # product incremental run 6.8% -> 5.7% of a full one (benchmarks/nightly_incremental.py
    # --gc-freeze, benchmarks/README.md).
    gc.freeze()
    result = tag_catalog(args.lake, model_version=args.model, full=args.full, run_id=args.run_id,
                         run_date=args.run_date, config=config)
    _print_json(result.to_dict())
    return 0


def cmd_nightly(args) -> int:
    tag_config = config_from_args(TagConfig, args)
    ingest_config = config_from_args(IngestConfig, argparse.Namespace(config=args.ingest_config))
    from tagger.nightly import run_nightly

    result = run_nightly(args.catalog, args.taxonomy, args.lake, ingest_config, tag_config,
                         model_version=args.model, tag_run_id=args.run_id, run_date=args.run_date)
    out = result.to_dict()
    out["ingest"]["shards_written"] = len(out["ingest"]["shards_written"])
    _print_json(out)
    return 0


def cmd_evaluate(args) -> int:
    config = config_from_args(TagConfig, args)
    from tagger.model.evaluate import evaluate_model

    _print_json(evaluate_model(args.lake, args.catalog, model_version=args.model,
                               taxonomy=args.taxonomy, name=args.name, config=config))
    return 0


def cmd_compare(args) -> int:
    from tagger.model.evaluate import compare_evaluations

    _print_json(compare_evaluations(args.lake, args.name, args.versions, resamples=args.resamples))
    return 0


def cmd_models(args) -> int:
    from tagger.io.storage import open_storage
    from tagger.model.production import describe_versions

    _print_json(describe_versions(open_storage(args.lake)))
    return 0


def cmd_promote(args) -> int:
    from tagger.io.storage import open_storage
    from tagger.model.production import promote_version

    _print_json(promote_version(open_storage(args.lake), args.version, reason=args.reason).model_dump())
    return 0


def cmd_label_issues(args) -> int:
    config = config_from_args(TagConfig, args)
    from tagger.review.issues import find_label_issues

    _print_json(find_label_issues(args.lake, model_version=args.model, config=config).to_dict())
    return 0


def cmd_review_push(args) -> int:
    from tagger.review.push import push_reviews

    _print_json(push_reviews(args.lake, label_issues=args.label_issues, sample=args.sample,
                             seed=args.seed, limit=args.limit).to_dict())
    return 0


def cmd_review_pull(args) -> int:
    from tagger.review.pull import pull_reviews

    _print_json(pull_reviews(args.lake).to_dict())
    return 0


def cmd_convert_weights(args) -> int:
    from tagger.model.weights import convert_weights

    sys.stdout.write(str(convert_weights(args.source, args.backbone, args.out)) + "\n")
    return 0


def cmd_vacuum(args) -> int:
    from datetime import timedelta

    from tagger.ops.vacuum import vacuum_lake

    result = vacuum_lake(args.lake, grace=timedelta(hours=args.grace_hours),
                         keep_history_days=args.keep_history_days, dry_run=args.dry_run)
    _print_json(result.to_dict())
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
    """The `tagger` parser: hand-written arguments, plus one flag per config field."""
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
    i.add_argument("--config", help="YAML with IngestConfig fields (flags override it)")
    i.add_argument("--run-id")
    add_config_flags(i, IngestConfig)
    i.set_defaults(func=cmd_ingest)

    t = sub.add_parser("train", help="split, train, tune thresholds, evaluate, register a model")
    t.add_argument("--lake", required=True)
    t.add_argument("--config", help="YAML with TrainConfig fields (flags override it)")
    add_config_flags(t, TrainConfig)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("tag", help="tag new and changed products, write tag tables")
    g.add_argument("--lake", required=True)
    g.add_argument("--model", help="model version (default: the lake's production version)")
    g.add_argument("--full", action="store_true", help="re-tag every product")
    g.add_argument("--config", help="YAML with TagConfig fields (flags override it)")
    g.add_argument("--run-id", help="re-using a run id replaces that run's output")
    g.add_argument("--run-date", type=date.fromisoformat, help="YYYY-MM-DD (default today, UTC)")
    add_config_flags(g, TagConfig)
    g.set_defaults(func=cmd_tag)

    n = sub.add_parser("nightly", help="ingest, then tag new and changed products, in one process "
                       "(each new image decoded once)")
    n.add_argument("catalog", help="CSV, JSON Lines or Parquet export (local path or s3://)")
    n.add_argument("--taxonomy", required=True, help="taxonomy YAML (catalog_schemas/taxonomies/)")
    n.add_argument("--lake", required=True, help="lake root: a folder or s3://bucket/prefix")
    n.add_argument("--model", help="model version (default: the lake's production version)")
    n.add_argument("--ingest-config", help="YAML with IngestConfig fields")
    n.add_argument("--config", help="YAML with TagConfig fields (flags override it)")
    n.add_argument("--run-id", help="the tag run's id: re-using one replaces that run's output")
    n.add_argument("--run-date", type=date.fromisoformat, help="YYYY-MM-DD (default today, UTC)")
    add_config_flags(n, TagConfig)
    n.set_defaults(func=cmd_nightly)

    e = sub.add_parser("evaluate", help="evaluate a model on a labelled catalog it never saw")
    e.add_argument("catalog", help="labelled catalog export (CSV, JSON Lines, Parquet; local or s3://)")
    e.add_argument("--lake", required=True)
    e.add_argument("--model", help="model version (default: the lake's production version)")
    e.add_argument("--taxonomy", help="taxonomy YAML whose `catalog:` mapping fits the export "
                   "(default: the model's own)")
    e.add_argument("--name", help="evaluation name (default: export name + time)")
    add_config_flags(e, TagConfig)
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="two model versions evaluated on one export: each one's mean "
                       "accuracy and macro-F1 with a 95%% interval, the first one's lead (paired bootstrap)")
    c.add_argument("versions", nargs="+", metavar="VERSION",
                   help="model versions (tagger models lists them)")
    c.add_argument("--name", required=True, help="the evaluation (tagger evaluate --name) of each version")
    c.add_argument("--lake", required=True)
    c.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 1000)")
    c.set_defaults(func=cmd_compare)

    m = sub.add_parser("models", help="model versions: production or candidate, key test figures")
    m.add_argument("--lake", required=True)
    m.set_defaults(func=cmd_models)

    r = sub.add_parser("promote", help="make a version production (an earlier one: roll back)")
    r.add_argument("version", help="model version (tagger models lists them)")
    r.add_argument("--lake", required=True)
    r.add_argument("--reason", default="", help="why, for the promotion history")
    r.set_defaults(func=cmd_promote)

    li = sub.add_parser("label-issues", help="curated labels that are probably wrong (cleanlab on "
                        "the model's held-out products) -> catalog/label_issues/")
    li.add_argument("--lake", required=True)
    li.add_argument("--model", help="model version (default: the lake's production version)")
    add_config_flags(li, TagConfig)
    li.set_defaults(func=cmd_label_issues)

    rv = sub.add_parser("review", help="the review loop in Label Studio (LABEL_STUDIO_URL, "
                        "LABEL_STUDIO_API_KEY from the environment)")
    rsub = rv.add_subparsers(dest="review_command", required=True)
    rp = rsub.add_parser("push", help="needs-review products (and more) as Label Studio tasks")
    rp.add_argument("--lake", required=True)
    rp.add_argument("--label-issues", action="store_true",
                    help="also the products of catalog/label_issues/ (tagger label-issues)")
    rp.add_argument("--sample", type=int, default=0,
                    help="also this many random products whose tags were all auto-published")
    rp.add_argument("--seed", type=int, default=0, help="seed of --sample")
    rp.add_argument("--limit", type=int, default=None, help="add at most this many new tasks")
    rp.set_defaults(func=cmd_review_push)
    rl = rsub.add_parser("pull", help="submitted annotations -> catalog/corrections/, reviewed "
                         "tags in tags/latest, the feedback report")
    rl.add_argument("--lake", required=True)
    rl.set_defaults(func=cmd_review_pull)

    w = sub.add_parser("convert-weights",
                       help="map a third-party ImageNet checkpoint onto a backbone (for --weights)")
    w.add_argument("source", help="checkpoint file (local or s3://): torch state dict or safetensors")
    w.add_argument("--backbone", required=True, choices=list(BACKBONES))
    w.add_argument("--out", required=True, help="safetensors file to write")
    w.set_defaults(func=cmd_convert_weights)

    v = sub.add_parser("vacuum", help="delete unreferenced shards, finished checkpoints, old tag history")
    v.add_argument("--lake", required=True)
    v.add_argument("--dry-run", action="store_true", help="list what would go and the bytes, delete nothing")
    v.add_argument("--grace-hours", type=float, default=24.0,
                   help="keep anything younger than this (a reader that started before keeps its "
                   "files; default 24)")
    v.add_argument("--keep-history-days", type=int, default=None,
                   help="delete tag history partitions older than this many days (default: keep all)")
    v.set_defaults(func=cmd_vacuum)
    return p


def flag_name(field: str) -> str:
    """The CLI flag of a config field: image_size -> --image-size."""
    return "--" + field.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel]) -> None:
    """One flag per field of `cls`, generated from the field: its type (Literal: choices, bool:
    --x/--no-x, `X | None`: X), default, bounds and description. Every flag defaults to None
    (unset), so a value from `--config` stays unless the flag is given; pydantic checks the
    bounds when the config is built (config_from_args)."""
    group = parser.add_argument_group(f"{cls.__name__} fields (tagger/config.py)")
    for name, field in cls.model_fields.items():
        kind = _flag_kind(cls, name, field)
        # A list field is a repeatable flag, also spelled in the singular (--image-root A
        # --image-root B): one value per flag, so a path with a comma stays one path.
        alias = [flag_name(name[:-1])] if kind.get("action") == "append" and name.endswith("s") else []
        group.add_argument(flag_name(name), *alias, dest=name, default=None,
                           help=_flag_help(cls, name, field), **kind)


def _flag_kind(cls: type[BaseModel], name: str, field: FieldInfo) -> dict:
    kind, optional = _strip_none(field.annotation)
    if kind is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        return dict(choices=choices, type=type(choices[0]))
    if kind in (int, float, str):
        return dict(type=_empty_or(kind) if optional else kind)
    if get_origin(kind) is list and get_args(kind) in ((int,), (float,), (str,)):
        return dict(action="append", type=get_args(kind)[0])
    raise TypeError(f"No CLI flag for {cls.__name__}.{name}: {field.annotation}. Supported: int, "
                    "float, str, bool, Literal[...], list[int|float|str] and those | None "
                    "(tagger/cli.py _flag_kind)")


def _strip_none(annotation) -> tuple[object, bool]:
    """(X, True) for `X | None`, (annotation, False) otherwise."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return annotation, False


def _empty_or(kind: type):
    """`kind`, but an empty string stays one: the model decides whether it means None."""
    def convert(text: str):
        return text if text == "" else kind(text)

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return convert


def _flag_help(cls: type[BaseModel], name: str, field: FieldInfo) -> str:
    if field.default is None and issubclass(cls, TrainConfig) and name in FROM_BACKBONE:
        default = "the backbone's"
    elif isinstance(field.default, bool):
        default = "on" if field.default else "off"
    else:
        default = "unset" if field.default is None else str(field.default)
    bounds = ", ".join(f"{op} {getattr(m, attr)}" for m in field.metadata
                       for attr, op in _BOUNDS.items() if hasattr(m, attr))
    facts = f"default: {default}" + (f"; {bounds}" if bounds else "")
    return f"{field.description or ''} ({facts})".replace("%", "%%")


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def config_from_args(cls: type[BaseModel], args: argparse.Namespace) -> BaseModel:
    """`cls` from the command's `--config` YAML (if any) plus the flags given. A bad value is a
    ValueError naming the flag (or the YAML file), the value and what would be accepted."""
    flags = {name: getattr(args, name, None) for name in cls.model_fields}
    path = getattr(args, "config", None)
    try:
        return load_config(cls, path, **flags)
    except ValidationError as e:
        lines = [_config_error(cls, err, flags, path) for err in e.errors()]
        raise ValueError(f"Invalid {cls.__name__}: " + "; ".join(lines)) from None


def _config_error(cls: type[BaseModel], err: dict, flags: dict, path: str | None) -> str:
    name = str(err["loc"][0]) if err["loc"] else "?"
    if err["type"] == "extra_forbidden":
        known = ", ".join(cls.model_fields)
        return f"unknown field {name!r} in {path}. Known: {known}"
    value = err.get("input")
    shown = repr(value) if isinstance(value, str) else value
    where = flag_name(name) if flags.get(name) is not None else f"{name} in {path}"
    return f"{where} {shown}: {err['msg']}"


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
    except StorageError as e:  # the storage refused: the disk, its permissions, the bucket
        if args.verbose:
            raise
        log.error("%s", e)
        return EXIT_STORAGE
    except (ValueError, FileNotFoundError, LookupError, RuntimeError) as e:
        if args.verbose:
            raise
        log.error("%s", e)
        return EXIT_ERROR
    except OSError as e:  # one the storage layer did not see (a library's own temporary file)
        if args.verbose or os_errno(e) not in OS_HINTS:
            raise
        log.error("%s", storage_error(e, "write", e.filename or "a file"))
        return EXIT_STORAGE


if __name__ == "__main__":
    sys.exit(main())

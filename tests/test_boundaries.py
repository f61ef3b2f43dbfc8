"""The layers hold: only tagger/io talks to S3 (boto3, botocore, s3transfer), catalog_schemas
imports nothing of ours, the tagger library runs without the flows or Prefect, and inside
tagger a room imports only rooms below it (FLOORS), so the rooms never import in a circle.

The source is read with `ast`, not imported: an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tagger", "flows", "catalog_schemas")

# (who, what it may not import, why)
RULES = [
    (lambda path: not path.startswith("tagger/io/"), ("boto3", "botocore", "s3transfer"),
     "only tagger/io talks to S3"),
    (lambda path: path.startswith("catalog_schemas/"), ("tagger", "flows"),
     "catalog_schemas imports nothing of ours"),
    (lambda path: path.startswith("tagger/"), ("flows", "prefect"),
     "tagger runs and is tested without the flows or Prefect"),
]


def imported_modules(source: str, path: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, the file at `path`
    (relative to the repository root, used to resolve relative imports), including
    importlib.import_module("...") and __import__("...") of a constant name."""
    package = path.removesuffix(".py").split("/")[:-1]
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            if node.module:
                found.append((node.lineno, ".".join(base + [node.module])))
            else:  # `from . import x`: the names are modules of the package
                found += [(node.lineno, ".".join(base + [alias.name])) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


# The rooms of tagger from the ground up: a module may import its own room and rooms on
# lower floors, never one on its own floor or above (so rooms never import in a circle). The
# most specific prefix decides.
FLOORS = {
    "tagger.backbones": 0,  # a registry that imports nothing; the config's dropdown reads it
    "tagger.config": 1, "tagger.labels": 1,
    "tagger.io": 2,
    "tagger.lake": 3,
    "tagger.data": 4, "tagger.quality": 4, "tagger.corrections": 4,
    "tagger.ingest": 5,
    "tagger.model": 6,
    "tagger.train": 7, "tagger.tag": 7,
    "tagger.demo": 8, "tagger.ops": 8, "tagger.review": 8, "tagger.nightly": 8,
    "tagger.cli": 9, "tagger": 9,
}


def floor(module: str) -> tuple[str, int] | None:
    """(room, floor) of a tagger module by its most specific prefix in FLOORS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS:
            return prefix, FLOORS[prefix]
    return None


def violations(source: str, path: str) -> list[str]:
    """'path:line: imports X (why)' for every import in `source` that a rule forbids."""
    out = []
    me = floor(path.removesuffix(".py").removesuffix("/__init__").replace("/", "."))
    for line, module in imported_modules(source, path):
        top = module.split(".")[0]
        for applies, forbidden, why in RULES:
            if applies(path) and top in forbidden:
                out.append(f"{path}:{line}: imports {module} ({why})")
        there = floor(module) if top == "tagger" and module != "tagger" else None
        if me and there and there[0] != me[0] and there[1] >= me[1]:
            out.append(f"{path}:{line}: imports {module} ({me[0]} on floor {me[1]} may import only "
                       f"rooms below it; {there[0]} is on floor {there[1]})")
    return out


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_the_package_keeps_its_layers():
    assert len(_sources()) > 30  # the walk found the package
    found = [v for p in _sources()
             for v in violations(p.read_text(encoding="utf-8"), p.relative_to(ROOT).as_posix())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path, source, expected", [
    ("tagger/ingest/source.py", "import boto3\n", ["tagger/ingest/source.py:1: imports boto3"]),
    ("tagger/ingest/source.py", "def f():\n    from botocore.exceptions import ClientError\n",
     ["tagger/ingest/source.py:2: imports botocore.exceptions"]),
    ("flows/ingest.py", "import s3transfer.manager\n", ["flows/ingest.py:1: imports s3transfer.manager"]),
    ("tagger/tag/run.py", "x = importlib.import_module('boto3')\n", ["tagger/tag/run.py:1: imports boto3"]),
    ("catalog_schemas/tables.py", "from tagger.lake import PRODUCTS_PATH\n",
     ["catalog_schemas/tables.py:1: imports tagger.lake"]),
    ("catalog_schemas/tables.py", "import flows.ingest\n", ["catalog_schemas/tables.py:1: imports flows.ingest"]),
    ("tagger/cli.py", "from prefect import flow\n", ["tagger/cli.py:1: imports prefect"]),
    ("tagger/cli.py", "import flows._common\n", ["tagger/cli.py:1: imports flows._common"]),
    ("tagger/io/storage.py", "from tagger.lake import PRODUCTS_PATH\n",
     ["tagger/io/storage.py:1: imports tagger.lake"]),
    ("tagger/quality/evaluation.py", "from tagger.model.versions import load_model\n",
     ["tagger/quality/evaluation.py:1: imports tagger.model.versions"]),
    ("tagger/tag/run.py", "from tagger.train.run import train_model\n",
     ["tagger/tag/run.py:1: imports tagger.train.run"]),
    ("tagger/config.py", "from tagger.model.factory import create_model\n",
     ["tagger/config.py:1: imports tagger.model.factory"]),
    # allowed
    ("tagger/config.py", "from tagger.backbones import BACKBONES\n", []),
    ("tagger/tag/run.py", "from tagger.model.scoring import score_images\nfrom tagger.tag.plan import TagPlan\n", []),
    ("tagger/model/evaluate.py", "from tagger.ingest.run import ingest_catalog\n", []),
    ("tagger/io/s3.py", "import boto3\nfrom botocore.config import Config\n", []),
    ("flows/ingest.py", "from prefect import flow\nfrom tagger.ingest import ingest_catalog\n", []),
    ("tagger/ingest/run.py", "from . import rows\nfrom .source import ImageSource\n", []),
    ("catalog_schemas/tables.py", "import pyarrow as pa\nfrom catalog_schemas.taxonomy import Taxonomy\n", []),
])
def test_the_checker_names_file_and_line(path, source, expected):
    got = violations(source, path)
    assert [v.split(" (")[0] for v in got] == expected


def test_relative_imports_resolve_inside_their_package():
    assert imported_modules("from . import rows\nfrom ..io.storage import open_file\n",
                            "tagger/ingest/run.py") == [(1, "tagger.ingest.rows"), (2, "tagger.io.storage")]

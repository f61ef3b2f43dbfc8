"""The README and docs/ stay true to the repository: every relative link and anchor resolves,
every file path they quote exists, every `TAGGER_*` setting is in the settings table, and
the README stays a front door (under 20 KB, short table cells, `make demo` and `make test`
first)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 20_000
CELL_MAX_CHARS = 200

_FENCE = re.compile(r"^```.*?^```[ \t]*$", flags=re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", flags=re.M)
# Repository paths quoted in backticks: `tagger/backbones.py`, `flows/tag.py:tag`.
_REPO_PATH = re.compile(r"`((?:tagger|flows|catalog_schemas|tests|benchmarks|docs)/[\w./-]*)(?::\w+)?`")


def _prose(text: str) -> str:
    """The text without fenced code blocks (their lines are commands, not links)."""
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, lower
    case, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_prose(text)):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _broken_links(page: Path) -> list[str]:
    """Relative links of a Markdown page whose file or heading does not exist."""
    broken = []
    for target in _LINK.findall(_CODE_SPAN.sub("", _prose(page.read_text(encoding="utf-8")))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{page.name}: {target} (no heading #{anchor} in {dest.name})")
    return broken


def _missing_paths(page: Path) -> list[str]:
    """Repository paths a page quotes in backticks that do not exist."""
    text = page.read_text(encoding="utf-8")
    return [f"{page.name}: `{p}`" for p in _REPO_PATH.findall(text) if not (ROOT / p).exists()]


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(1) if match else ""


def _table_variables(section: str) -> list[str]:
    """The first column of the tables in a section, where it names a TAGGER_* variable."""
    return re.findall(r"^\| `(TAGGER_\w+)` \|", section, flags=re.M)


def _settings_problems(readme: str, fields: list[str]) -> list[str]:
    """Settings fields missing from the README's settings table, and rows naming no field."""
    documented = _table_variables(_section(readme, "Settings"))
    expected = [f"TAGGER_{name.upper()}" for name in fields]
    return ([f"{v} is not in the README's settings table" for v in expected if v not in documented]
            + [f"{v} in the settings table is not a Settings field" for v in documented
               if v not in expected])


def _first_commands(readme: str) -> list[str]:
    """The commands of the README's first code block, without their comments."""
    block = re.search(r"^```\w*\n(.*?)^```", readme, flags=re.M | re.S)
    lines = block.group(1).splitlines() if block else []
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _long_cells(text: str, limit: int = CELL_MAX_CHARS) -> list[str]:
    cells = [cell.strip() for line in _prose(text).splitlines() if line.startswith("|")
             for cell in line.strip().strip("|").split(" | ")]
    return [f"{len(c)} chars: {c[:60]}..." for c in cells if len(c) > limit]


def test_every_relative_link_and_anchor_resolves():
    assert [b for page in PAGES for b in _broken_links(page)] == []


def test_every_quoted_repository_path_exists():
    assert [m for page in PAGES for m in _missing_paths(page)] == []


def test_every_setting_is_in_the_settings_table():
    from tagger.config import Settings

    fields = list(Settings.model_fields)
    assert fields, "Settings has no fields"
    assert _settings_problems((ROOT / "README.md").read_text(encoding="utf-8"), fields) == []


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < README_MAX_BYTES, "README.md: move the depth to docs/"
    assert _first_commands(readme) == ["make demo", "make test"]
    assert _long_cells(readme) == []
    assert "docs/custom-run.png" in readme


def test_the_checks_can_fail(tmp_path):
    """Each check reports what is wrong on a page made to be wrong."""
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-section) [gone](missing.md) "
                    "[no heading](other.md#nowhere) [self](#page) [bad self](#nope)\n"
                    "```\n[in code](ignored.md)\n```\n`[in a span](ignored.md)`\n")
    assert _broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#nowhere (no heading #nowhere in other.md)",
        "page.md: #nope (no heading #nope in page.md)",
    ]
    page.write_text("`tagger/config.py` `tagger/no_such_module.py` `flows/tag.py:tag`\n")
    assert _missing_paths(page) == ["page.md: `tagger/no_such_module.py`"]

    readme = ("# x\n\n```bash\nmake demo   # the demo\nmake all\n```\n\n## Settings\n\n"
              "| variable | default | meaning |\n|---|---|---|\n| `TAGGER_LAKE` | `lake` | root |\n"
              "| `TAGGER_GONE` | 1 | stale |\n\n## Next\n\n| `TAGGER_LOCK_WAIT_S` | 0 | elsewhere |\n")
    assert _settings_problems(readme, ["lake", "lock_wait_s"]) == [
        "TAGGER_LOCK_WAIT_S is not in the README's settings table",
        "TAGGER_GONE in the settings table is not a Settings field",
    ]
    assert _first_commands(readme) == ["make demo", "make all"]
    assert _long_cells(f"| a | {'x' * 201} |\n") and not _long_cells(f"| a | {'x' * 200} |\n")


def test_slugs_follow_github():
    assert _slug("Ingest from S3: parallel vs sequential fetching (`ingest_s3.py`)") == \
        "ingest-from-s3-parallel-vs-sequential-fetching-ingest_s3py"
    assert _slug("Variables of `make deploy` and `prefect.yaml`") == \
        "variables-of-make-deploy-and-prefectyaml"
    assert _anchors("## Tests\n\n## Tests\n") == {"tests", "tests-1"}

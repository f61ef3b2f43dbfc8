"""The command line of operating a lake: image roots, --rebuild, storage errors' exit code,
`tagger vacuum`."""

from __future__ import annotations

from tagger.cli import build_parser, config_from_args
from tagger.config import IngestConfig

INGEST = ["ingest", "catalog.csv", "--taxonomy", "t.yaml", "--lake", "lake"]


def test_image_root_is_a_repeatable_flag_in_both_spellings(tmp_path):
    args = build_parser().parse_args(INGEST + ["--image-root", "/mnt/nas,2024", "--image-roots", "s3://b/p"])
    assert config_from_args(IngestConfig, args).image_roots == ["/mnt/nas,2024", "s3://b/p"]
    assert config_from_args(IngestConfig, build_parser().parse_args(INGEST)).image_roots == []
    (tmp_path / "ingest.yaml").write_text("image_roots: [/srv/images]\n")
    args = build_parser().parse_args(INGEST + ["--config", str(tmp_path / "ingest.yaml")])
    assert config_from_args(IngestConfig, args).image_roots == ["/srv/images"]

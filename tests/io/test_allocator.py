"""glibc keeps the buffers a photo's decode frees for the next photo, instead of faulting them in anew."""

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DEMO_TAXONOMY, ROOT

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _photos(tmp_path, n: int, side: int = 1500) -> Path:
    """A catalog of n demo products sharing one noisy side x side px photo, each file with
    other trailing bytes: a new hash, so every photo is decoded."""
    from benchmarks.catalogs import large_catalog

    catalog, _, files = large_catalog(tmp_path / "one", 1, side)
    rows = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    data = files[0].read_bytes()
    (tmp_path / "images").mkdir()
    for i in range(n):
        (tmp_path / "images" / f"p{i}.jpg").write_bytes(data + i.to_bytes(4, "big"))
    many = rows.loc[[0] * n].assign(id=[f"p{i}" for i in range(n)],
                                     image=[f"images/p{i}.jpg" for i in range(n)])
    many.to_csv(tmp_path / "catalog.csv", index=False)
    return tmp_path / "catalog.csv"


def _untuned() -> dict:
    """This environment without malloc tuning: a Dask nanny started in this process (the
    local clusters of other tests) sets MALLOC_TRIM_THRESHOLD_ for its workers in it
    (distributed.nanny.pre-spawn-environ)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}


def _ingest_faults(catalog: Path, lake: Path, **env) -> int:
    """Minor page faults of `tagger ingest` as a whole command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    subprocess.run([sys.executable, "-m", "tagger.cli", "ingest", str(catalog), "--taxonomy",
                    DEMO_TAXONOMY, "--lake", str(lake)], env={**_untuned(), "TQDM_DISABLE": "1", **env},
                   cwd=ROOT, capture_output=True, check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


@glibc
@pytest.mark.slow
def test_ingest_reuses_a_photos_buffers_instead_of_faulting_them_in_again(tmp_path):
    catalog = _photos(tmp_path, 120)
    # a tunable at its default: glibc's own behaviour, which keep_freed_memory leaves alone
    plain = _ingest_faults(catalog, tmp_path / "plain", GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
    tuned = _ingest_faults(catalog, tmp_path / "tuned")
    # measured here: 235,000 faults plain, 49,000 tuned (150 photos; the imports are ~40,000)
    assert tuned < plain / 2, (plain, tuned)


@glibc
def test_a_users_own_tuning_is_left_alone():
    code = "from tagger.io.allocator import keep_freed_memory as k; print(k())"
    for env in ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}, {}):
        out = subprocess.run([sys.executable, "-c", code], env={**_untuned(), **env}, cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == str(not env), (env, out)

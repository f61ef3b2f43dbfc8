"""Two runs against one lake: the second waits or refuses with a clear message (tagger/io/lock.py).

Every test uses real processes: the lock must hold across them, not just across threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tagger.ingest.run import ingest_catalog
from tagger.lake import PRODUCTS_PATH, read_products
from tagger.io.lock import LakeBusy, lake_lock
from tagger.io.storage import open_storage
from tests.conftest import DEMO_TAXONOMY


@pytest.fixture(params=["local", "s3"])
def lake(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "lake")
    return f"{request.getfixturevalue('s3_bucket')}/lake"


def _holder(lake: str, name: str, ttl: float = 600) -> subprocess.Popen:
    """A process that takes the lock, says 'held', and sleeps until killed."""
    code = textwrap.dedent(f"""
        import signal, time
        # SIGINT is how the tests stop it; a shell that started the suite in the background
        # hands its children SIGINT ignored, so restore Python's own handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from tagger.io.lock import lake_lock
        from tagger.io.storage import open_storage
        with lake_lock(open_storage({lake!r}), {name!r}, owner="nightly-A", ttl={ttl}):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_refuses_then_gets_the_lock_after_the_holder_exits(lake):
    holder = _holder(lake, "catalog")
    storage = open_storage(lake)
    try:
        with pytest.raises(LakeBusy, match=r"busy: run 'nightly-A' \(host .*pid \d+.*'catalog' lock"):
            with lake_lock(storage, "catalog", owner="nightly-B", wait=0):
                pass
        with lake_lock(storage, "tags", owner="nightly-B", wait=0):  # other tables: no wait
            pass
    finally:
        holder.send_signal(signal.SIGINT)  # a clean exit: the lock is released on the way out
        holder.wait(10)
    with lake_lock(storage, "catalog", owner="nightly-B", wait=5):
        pass


def test_second_run_waits_for_the_first(lake):
    holder = _holder(lake, "catalog")
    threading.Timer(1.0, holder.send_signal, (signal.SIGINT,)).start()
    t0 = time.monotonic()
    with lake_lock(open_storage(lake), "catalog", owner="nightly-B", wait=30):
        assert time.monotonic() - t0 >= 0.9
    holder.wait(10)


def test_killed_holder_does_not_block_forever(lake):
    ttl = 1.5  # S3: the lock of a SIGKILLed run expires; locally the kernel drops it at once
    holder = _holder(lake, "catalog", ttl=ttl)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    with lake_lock(open_storage(lake), "catalog", owner="nightly-B", wait=ttl + 5):
        pass


def _cli(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tagger.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_ingest_cli_refuses_while_another_ingest_holds_the_lake(catalog, lake):
    storage = open_storage(lake)
    with lake_lock(storage, "catalog", owner="nightly-1"):
        proc = _cli("ingest", str(catalog), "--taxonomy", DEMO_TAXONOMY, "--lake", lake)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "is busy: run 'nightly-1'" in err and "TAGGER_LOCK_WAIT_S" in err
    assert not storage.exists(PRODUCTS_PATH)
    # with a wait it finishes once the lock is free
    with lake_lock(storage, "catalog", owner="nightly-1"):
        proc = _cli("ingest", str(catalog), "--taxonomy", DEMO_TAXONOMY, "--lake", lake,
                    env={"TAGGER_LOCK_WAIT_S": "120"})
        time.sleep(1.0)
        assert proc.poll() is None  # waiting
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert read_products(storage).num_rows == 60


@pytest.mark.slow
def test_two_concurrent_ingests_end_like_one(catalog, tmp_path):
    """Two ingest processes started together against one lake: both finish (one waits for
    the other), and the tables are what a single ingest makes: no duplicates, no lost rows."""
    lake = str(tmp_path / "lake")
    procs = [_cli("ingest", str(catalog), "--taxonomy", DEMO_TAXONOMY, "--lake", lake,
                  "--run-id", f"run-{i}", env={"TAGGER_LOCK_WAIT_S": "120"}) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    products = read_products(open_storage(lake))
    ids = products["product_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 60
    alone = tmp_path / "alone"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(alone))
    single = read_products(open_storage(alone))
    assert products.select(["product_id", "image_hash", "labels"]).equals(
        single.select(["product_id", "image_hash", "labels"]))
    assert not list((tmp_path / "lake" / ".locks").glob("*"))  # released


def test_tag_takes_the_tags_lock(trained_lake):
    lake, version = trained_lake
    from tagger.tag.run import tag_catalog

    with lake_lock(open_storage(lake), "tags", owner="tag-nightly"):
        with pytest.raises(LakeBusy, match="'tag-nightly'.*'tags' lock"):
            tag_catalog(str(lake), model_version=version, run_id="tag-2")
    assert tag_catalog(str(lake), model_version=version, run_id="tag-2").tagged == 60


@pytest.fixture
def strict_s3(monkeypatch):
    """An in-process S3 (moto) that enforces If-None-Match / If-Match as AWS does (the
    loopback endpoint ignores them): the lock's conditional writes decide, not its read-back."""
    import boto3
    from moto import mock_aws

    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="strict")
        yield open_storage("s3://strict/lake")


def test_object_lock_on_a_store_that_enforces_conditions(strict_s3, monkeypatch):
    import json

    writes = []  # (method, its answer) of every conditional write the lock makes

    def recorded(name):
        real = getattr(type(strict_s3), name)

        def write(self, *args):
            answer = real(self, *args)
            writes.append((name, answer))
            return answer
        return write

    for name in ("create_if_absent", "replace_if"):
        monkeypatch.setattr(type(strict_s3), name, recorded(name))
    with lake_lock(strict_s3, "catalog", owner="nightly-A"):
        with pytest.raises(LakeBusy, match="busy: run 'nightly-A'"):
            with lake_lock(strict_s3, "catalog", owner="nightly-B", wait=0):
                pass
        assert writes == [("create_if_absent", True)]  # B saw a live holder and wrote nothing
        # B reads no lock (A's create lands just after B's read): the store refuses B's create.
        real_read = type(strict_s3).read_with_version
        reads = []

        def racing_read(self, path):
            reads.append(path)
            return None if len(reads) == 1 else real_read(self, path)

        monkeypatch.setattr(type(strict_s3), "read_with_version", racing_read)
        with pytest.raises(LakeBusy, match="busy: another run holds its 'catalog' lock"):
            with lake_lock(strict_s3, "catalog", owner="nightly-B", wait=0):
                pass
        monkeypatch.setattr(type(strict_s3), "read_with_version", real_read)
    assert writes == [("create_if_absent", True), ("create_if_absent", False)]
    assert not strict_s3.exists(".locks/catalog.json")  # released

    # A holder whose expiry passed (its run died on another host) is replaced on its version.
    dead = dict(owner="nightly-0", host="elsewhere", pid=1, token="t", since="x", expires=time.time() - 1)
    strict_s3.write_bytes(".locks/catalog.json", json.dumps(dead).encode())
    with lake_lock(strict_s3, "catalog", owner="nightly-C", wait=0):
        held = json.loads(strict_s3.read_bytes(".locks/catalog.json"))
        assert held["owner"] == "nightly-C"
    assert writes[2:] == [("replace_if", True)]


def test_renewal_extends_the_lock_and_never_overwrites_a_new_holder(strict_s3):
    import json

    path = ".locks/catalog.json"
    with lake_lock(strict_s3, "catalog", owner="nightly-A", ttl=0.6):  # renewed every 0.2 s
        first = json.loads(strict_s3.read_bytes(path))
        time.sleep(0.5)
        renewed = json.loads(strict_s3.read_bytes(path))
        assert renewed["token"] == first["token"] and renewed["expires"] > first["expires"]
        # Our renewals failed long enough for another run to take the lock over:
        strict_s3.write_bytes(path, json.dumps(dict(renewed, owner="nightly-B", token="B")).encode())
        time.sleep(0.5)
        assert json.loads(strict_s3.read_bytes(path))["owner"] == "nightly-B"
    assert json.loads(strict_s3.read_bytes(path))["owner"] == "nightly-B"  # and not released by A

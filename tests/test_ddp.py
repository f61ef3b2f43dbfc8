"""DDP under torchrun: two CPU processes with the gloo backend train and register one model."""

import subprocess
import sys

import pytest

from tagger.registry import list_versions, read_card
from tagger.storage import open_storage
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_gloo(trained_lake):
    lake, first = trained_lake
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "-m", "tagger.cli", "train", "--lake", str(lake),
           "--backbone", "test_efficientnet", "--image-size", "48", "--epochs", "1",
           "--batch-size", "8", "--no-pretrained", "--workers", "0", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = list_versions(open_storage(lake))
    assert len(versions) == 2 and proc.stdout.strip() == versions[-1]  # only rank 0 registers
    card = read_card(open_storage(lake), versions[-1])
    assert card["training"]["world_size"] == 2
    # each rank saw half the training split per epoch
    assert card["history"][0]["epoch"] == 1

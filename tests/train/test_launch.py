"""Training on every GPU: how many processes, and the torchrun command (no GPU needed)."""

import sys

import pytest

from tagger.config import TrainConfig
from tagger.train.launch import build_torchrun_command, plan_processes


@pytest.mark.parametrize("device,gpus,expected", [
    ("auto", 0, 1), ("auto", 1, 1), ("auto", 2, 2), ("auto", 8, 8), ("cuda", 4, 4),
    ("cpu", 8, 1),  # asked for the CPU: one process even on a GPU machine
])
def test_plan_processes(device, gpus, expected, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert plan_processes(TrainConfig(device=device), gpus) == expected


def test_no_torchrun_inside_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert plan_processes(TrainConfig(), 8) == 1


def test_torchrun_command():
    cmd = build_torchrun_command("s3://lake/x", "/tmp/train.yaml", 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=4" in cmd
    assert cmd[cmd.index("-m", 3) + 1:] == ["tagger.cli", "train", "--lake", "s3://lake/x",
                                            "--config", "/tmp/train.yaml"]

"""Use every GPU of the machine: one training process per GPU under torchrun, else in-process.

The train flow calls `run_training`; on a worker with more than one CUDA GPU it starts
`torchrun --nproc_per_node=<gpus> -m tagger.cli train ...` (DDP, NCCL; see tagger/train/run.py)
and returns the version that rank 0 registered. `batch_size` stays per device, so the global
batch grows with the number of GPUs (as in torchvision's references).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tagger.config import TrainConfig
from tagger.train.run import train_model

log = logging.getLogger(__name__)


def count_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_processes(config: TrainConfig, gpus: int) -> int:
    """Training processes to start: one per GPU when CUDA is used and there is more than one
    GPU; 1 otherwise (CPU, a single GPU, or already inside torchrun)."""
    if config.device == "cpu" or gpus <= 1 or "LOCAL_RANK" in os.environ:
        return 1
    return gpus


def build_torchrun_command(lake: str, config_file: str | Path, nproc: int) -> list[str]:
    """The torchrun command line for one machine with `nproc` processes (`--standalone`:
    a local rendezvous on a free port, so two jobs on one worker do not collide)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "tagger.cli", "train", "--lake", lake, "--config", str(config_file),
    ]


def run_training(lake: str, config: TrainConfig, gpus: int | None = None,
                 timeout: float | None = None) -> str:
    """Train and register a model on every GPU of this machine; returns the version."""
    gpus = count_gpus() if gpus is None else gpus
    nproc = plan_processes(config, gpus)
    if nproc == 1:
        return train_model(lake, config)
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        config_file = Path(tmp) / "train.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
        cmd = build_torchrun_command(lake, config_file, nproc)
        log.info("training on %d GPUs: %s", nproc, " ".join(cmd))
        # stderr (logs, progress) passes through to the worker; stdout carries the version.
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"torchrun with {nproc} processes failed (exit {proc.returncode}); see the log "
            "lines above. To train on one GPU instead, set CUDA_VISIBLE_DEVICES=0 on the worker."
        )
    return proc.stdout.strip().splitlines()[-1]

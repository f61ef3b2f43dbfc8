"""TensorBoard event files of a training run: the per-epoch figures, for
`tensorboard --logdir <lake>/models/<version>`.

Written by torch's own SummaryWriter (it needs the `tensorboard` package:
pip install 'product-tagger[tensorboard]') into a local temporary folder while training,
and uploaded under models/<version>/tensorboard/ at registration (the lake may be S3,
which an event writer cannot append to). Without the package, one INFO line says how to
get them and training goes on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from tagger.io.storage import Storage

log = logging.getLogger(__name__)

TENSORBOARD = "tensorboard"  # the folder under models/<version>/


class EventLog:
    """Scalars per epoch into TensorBoard event files in a local temporary folder."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("no TensorBoard event files: pip install 'product-tagger[tensorboard]' "
                     "to get them under models/<version>/%s/", TENSORBOARD)
            self.folder, self._writer = None, None
            return
        self.folder = Path(tempfile.mkdtemp(prefix="tagger-tb-"))
        self._writer = SummaryWriter(log_dir=str(self.folder))

    def add_epoch(self, entry: dict) -> None:
        """The history entry of one epoch as scalars at step `epoch`."""
        if self._writer is None:
            return
        step = entry["epoch"]
        for key in ("train_loss", "val_loss", "val_mAP", "val_accuracy", "val_mAP_raw", "val_mAP_ema",
                    "seconds"):
            if entry.get(key) is not None:
                self._writer.add_scalar(key.replace("_", "/", 1), entry[key], step)
        for attr, acc in (entry.get("val_attribute_accuracy") or {}).items():
            self._writer.add_scalar(f"val_accuracy/{attr}", acc, step)

    def upload(self, storage: Storage, prefix: str) -> None:
        """Flush and copy the event files under `prefix`/tensorboard/."""
        if self._writer is None:
            return
        self._writer.flush()
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                storage.upload(path, f"{prefix}/{TENSORBOARD}/{path.relative_to(self.folder).as_posix()}")

    def close(self) -> None:
        """Close the writer and remove the local folder."""
        if self._writer is not None:
            self._writer.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            self._writer = None

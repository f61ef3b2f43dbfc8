"""Training: split, fit, register a model version (`train_model`, tagger.train.run).

run (train_model: the steps in order), split (training data and the train/validation split),
loop (one epoch), epochs (per-epoch validation, the best epoch), curves (TensorBoard event
files), checkpoints (save, resume), register (validation, thresholds, the model card),
losses, launch (one process per GPU under torchrun).
"""

from tagger.train.run import train_model

__all__ = ["train_model"]

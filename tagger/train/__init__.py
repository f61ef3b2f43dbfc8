"""Training: split, fit, register a model version (tagger.train.run.train_model)."""

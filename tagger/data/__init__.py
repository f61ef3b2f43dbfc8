"""Images in: safe decoding, the transforms, the dataset over image shards, the loaders."""

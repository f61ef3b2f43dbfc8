"""Prefect 3 flows: thin wrappers over tagger functions."""

import os

# Show the library's own log lines (progress, throughput, ETA, written URIs) in flow run
# logs. Set before prefect is imported, which reads its settings once.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tagger")

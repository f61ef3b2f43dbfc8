"""The demo: a generated sample catalog, ingested, trained on and tagged."""

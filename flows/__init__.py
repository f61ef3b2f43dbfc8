"""Prefect 3 flows: thin wrappers over tagger functions."""

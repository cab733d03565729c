"""Helpers with no knowledge of models: atomic writes, JSONL, hashing, one-line text."""

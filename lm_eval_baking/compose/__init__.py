"""Bakes built from bakes: evaluators, prompt pursuit, multi-prompt sequences."""

"""Validation through lm_eval: our tasks' data and classes, personas and drift, forgetting, BIG-bench."""

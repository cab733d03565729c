"""The lowest layer: tokenization, forward passes, KL maths, sampling, scoring, statistics."""

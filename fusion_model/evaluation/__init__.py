"""Offline evaluation: pure metrics, exact-search evaluator, paired bootstrap."""

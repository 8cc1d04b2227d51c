"""Conformance check: Dramatiq's own tests run on jobkit's broker classes (see run.py)."""

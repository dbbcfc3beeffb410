"""Notebook-style examples, each run by a test (see tests/common/interp/test_tour.py)."""

"""Experiments as sets of ordinary runs: walk-forward folds (folds.py)."""

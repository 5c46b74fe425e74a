"""Hyperparameter sweeps on Optuna: each trial an ordinary run that resumes bit-exactly."""

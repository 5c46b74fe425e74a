"""Trainer, resumable sampler, RNG capture and the checkpoint schema."""

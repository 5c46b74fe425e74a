"""Indicator transformer: TA-Lib features -> transformer, trained so that it can stop at any moment.

Data flow (one direction):
    OHLCV files / synthetic market -> validate -> TA-Lib features -> feature cache (.npy + manifest)
    -> windowed dataset -> resumable sampler -> DataLoader -> transformer -> trainer -> atomic checkpoints
"""

__version__ = "0.1.0"

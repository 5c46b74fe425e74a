#!/usr/bin/env python3
"""Thin entry point; see `python train_indicator_transformer.py --help`."""

import sys

# startup imports only the standard library; it holds a Ctrl-C until torch and NumPy are loaded.
from indicator_transformer.startup import train

if __name__ == "__main__":
    sys.exit(train())

#!/usr/bin/env python3
"""Thin entry point; see `python train_indicator_transformer.py --help`."""

import sys

from indicator_transformer.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

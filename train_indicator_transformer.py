#!/usr/bin/env python3
"""Thin entry point; see `python train_indicator_transformer.py --help`."""

import sys

from indicator_transformer.startup import deferred_interrupt

with deferred_interrupt():  # a Ctrl-C while the libraries load ends in a clean exit 130, never mid-import
    from indicator_transformer.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

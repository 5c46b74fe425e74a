#!/usr/bin/env python3
"""Thin entry point; see `python resume_training.py --help`."""

import sys

# startup imports only the standard library; it holds a Ctrl-C until torch and NumPy are loaded.
from indicator_transformer.startup import resume

if __name__ == "__main__":
    sys.exit(resume())

#!/usr/bin/env python3
"""Validate and repair the feature cache. See ``python validate_cache.py --help``."""

import sys

# startup imports only the standard library; it holds a Ctrl-C until torch and NumPy are loaded.
from indicator_transformer.startup import validate_cache

if __name__ == "__main__":
    sys.exit(validate_cache())

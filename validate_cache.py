#!/usr/bin/env python3
"""Validate and repair the feature cache. See ``python validate_cache.py --help``."""

import sys

from indicator_transformer.cli.validate_cache import main

if __name__ == "__main__":
    sys.exit(main())

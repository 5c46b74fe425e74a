#!/usr/bin/env python3
"""Validate and repair the feature cache. See ``python validate_cache.py --help``."""

import sys

try:
    from indicator_transformer.cli.validate_cache import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: nothing was started or written yet
    print("Interrupted during start-up: nothing was written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

"""`python -m indicator_transformer ...`: the same as the indicator-transformer command."""

import sys

from .startup import tool

sys.exit(tool())

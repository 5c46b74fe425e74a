"""`python -m indicator_transformer ...`: the same as the indicator-transformer command."""

import sys

from .cli.main import main

sys.exit(main())

"""``python -m indicator_transformer.train_main [train flags]``: the train command as a module,
the form ``torchrun -m`` starts (walk-forward's runs under torchrun: the package installed from a
wheel has no train_indicator_transformer.py script to point torchrun at)."""

import sys

from .startup import train

if __name__ == "__main__":
    sys.exit(train())

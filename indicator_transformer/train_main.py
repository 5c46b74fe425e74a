"""``python -m indicator_transformer.train_main [train flags]``: the train command as a module,
the form ``torchrun -m`` starts (walk-forward's runs under torchrun: the package installed from a
wheel has no train_indicator_transformer.py script to point torchrun at).

:func:`torchrun` is the launcher itself, as walk-forward starts it: torchrun's own ``main``, whose
reaction to a stop signal (a ``SignalException`` after it stopped the ranks) and to a failed rank
(``ChildFailedError``, after its error summary) ends as an exit code instead of a traceback
printed among the ranks' output. The ranks say what happened themselves."""

import sys

from .startup import train


def torchrun() -> int:
    """Run torchrun with ``sys.argv[1:]``; its exit code (128 + the signal on a stop)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main()
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(train())

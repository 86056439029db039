"""``python -m model.training ...``: the training command line (``model.training.cli``)."""

import sys

from model.training.cli import main

if __name__ == "__main__":
    sys.exit(main())

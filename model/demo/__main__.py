"""``python -m model.demo --out DIR``: build the offline demo bundle (``model.demo.builder``)."""

import sys

from model.demo.builder import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m attrpreserve`` (and ``torchrun -m attrpreserve evaluate ...``): the ``attrpreserve`` command."""

import sys

from attrpreserve.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m contextual_loss``: the command line."""

import sys

from contextual_loss.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m gatedsae`: the command line (gatedsae.cli.main)."""

import sys

from gatedsae.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

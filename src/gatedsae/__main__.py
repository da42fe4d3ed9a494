"""`python -m gatedsae`: the command line (gatedsae.cli.main)."""

from gatedsae.cli.main import main

if __name__ == "__main__":
    main()

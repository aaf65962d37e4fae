"""`python app.py`: the studio from a checkout (installed, the same is the `sims-studio` command)."""
import sys

from studio.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m studio`: the same as the `sims-studio` command."""
import sys

from .cli import main

sys.exit(main())

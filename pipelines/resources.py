"""Where the bundled data files (demo model, digits classifier) are, in a checkout and when installed.

A checkout or an editable install reads `<repository>/assets`; `pip install .` copies the same files
to `<prefix>/share/sims-studio/assets` (site-packages holds only code). $SIMS_ASSETS_DIR overrides both.
"""
from __future__ import annotations

import os
import site
import sys
from pathlib import Path

INSTALLED = Path("share") / "sims-studio" / "assets"


def assets_dir() -> Path:
    """The first existing assets folder: $SIMS_ASSETS_DIR, the checkout's, the installed copy's."""
    if os.environ.get("SIMS_ASSETS_DIR"):
        return Path(os.environ["SIMS_ASSETS_DIR"]).expanduser()
    checkout = Path(__file__).resolve().parents[1] / "assets"
    candidates = [checkout, Path(sys.prefix) / INSTALLED, Path(site.getuserbase()) / INSTALLED]
    # missing everywhere: the checkout path, so that messages name where a rebuild writes it
    return next((p for p in candidates if p.is_dir()), checkout)


ASSETS = assets_dir()

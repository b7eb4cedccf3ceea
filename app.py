"""Streamlit launcher for kd-keras in a checkout: `streamlit run app.py [-- --runs DIR]`.

The page itself is `kd_app/page.py` (`kd-keras app` runs the same page from
an installed kd-keras); docs/app.md describes it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kd_app.page import main  # noqa: E402

main()

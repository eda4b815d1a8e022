"""Where the repository is, so tests find its files wherever their own module sits."""

from __future__ import annotations

from pathlib import Path

#: The repository's root: README.md, deploy/, scripts/, the package.
ROOT = Path(__file__).resolve().parents[2]
#: The suite's root, home of the node projects (js/, browser/) and host apps (apps/).
TESTS = ROOT / "tests"

"""What names the package and its version, held to one another.

scripts/check-package builds, checks and installs the package itself; these
tests, which start nothing, keep the documents that name the distribution and
the version in step with pyproject.toml and resumable/__init__.py, and the
README's contents list in step with its sections.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import resumable

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_version_is_set_once_and_read_by_the_build() -> None:
    """A second copy in pyproject.toml would drift from the one the code reports."""
    document = project()
    assert "version" not in document["project"]
    assert "version" in document["project"]["dynamic"]
    version = document["tool"]["setuptools"]["dynamic"]["version"]
    assert version == {"attr": "resumable.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", resumable.__version__)


def test_the_readme_installs_the_distribution_by_its_name() -> None:
    """``pip install resumable`` would install another project: the README names ours."""
    name = project()["project"]["name"]
    assert name != "resumable"
    text = README.read_text()
    assert f"pip install {name}\n" in text
    assert not re.search(r"pip install resumable\s", text)


def test_the_changelog_has_the_current_version_and_an_unreleased_section() -> None:
    headings = re.findall(r"^## (.+)$", CHANGELOG.read_text(), re.M)
    assert headings[0] == "[Unreleased]"
    versions = [re.match(r"\[([^\]]+)\]", h).group(1) for h in headings[1:]]
    assert resumable.__version__ in versions, f"CHANGELOG.md has no {resumable.__version__}"


def test_the_readme_contents_lists_every_section_in_order() -> None:
    text = README.read_text()
    contents = text.split("\nContents:\n", 1)[1].split("\n\n", 1)[0]
    links = re.findall(r"\[([^\]]+)\]\(#([^)]+)\)", contents)
    sections = re.findall(r"^## (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), re.M)
    assert [title for title, _anchor in links] == sections
    assert [anchor for _title, anchor in links] == [slug(s) for s in sections]

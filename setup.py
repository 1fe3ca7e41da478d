"""The metadata lives in setup.cfg; this file only makes the long description: README.md, whose links into the
repository (docs/, examples/, LICENSE) work on GitHub but not on a package index. There each becomes its text
with the path it names, since the project has no public address yet (PML_DC_SOURCE_URL, when set, makes them
links into that address instead)."""

import os
import re
from pathlib import Path

from setuptools import setup

# a Markdown link or image whose target is a path of the repository (not a URL, not an anchor of the page)
RELATIVE_LINK = re.compile(r"(!?)\[([^\]]+)\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def index_description(readme: str, source_url: str = "") -> str:
    """README.md for a package index: links into the repository made absolute (``source_url``) or plain text."""

    def rewrite(match: re.Match) -> str:
        image, text, target = match.groups()
        if source_url:
            return f"{image}[{text}]({source_url.rstrip('/')}/{target.lstrip('./')})"
        if image:  # a picture of the repository: its caption
            return f"*{text}*"
        return text if target.split("#")[0] in text else f"{text} (`{target.split('#')[0]}` in the repository)"

    return RELATIVE_LINK.sub(rewrite, readme)


if __name__ == "__main__":
    readme = (Path(__file__).parent / "README.md").read_text(encoding="utf-8")
    setup(long_description=index_description(readme, os.environ.get("PML_DC_SOURCE_URL", "")))

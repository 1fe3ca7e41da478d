"""Reading the documentation for the tests: where its pages and notebooks are, and their fenced code blocks."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("0[1-4]_*.ipynb"))
PAPER_RECIPE = EXAMPLES / "05_paper_recipe.ipynb"
DOC_PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").rglob("*.md") if "examples" not in p.parts)
CODE_WIDTH = 88  # the content column of the site

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)(?P<attrs>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)


def rel(path):
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(path):
    """(language, attributes, code, line number) of every fenced block of a Markdown file."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines())
        out.append((m.group("lang"), m.group("attrs").strip(), body, text.count("\n", 0, m.start()) + 2))
    return out


def python_blocks(path):
    """[(index, line, code, output)]: the python blocks, each with the "Output" text block that follows it."""
    blocks = fenced_blocks(path)
    out = []
    for j, (lang, _attrs, code, line) in enumerate(blocks):
        if lang != "python":
            continue
        following = blocks[j + 1] if j + 1 < len(blocks) else None
        output = following[2] if following and following[0] == "text" and 'title="Output"' in following[1] else None
        out.append((len(out), line, code, output))
    return out

"""Griffe extension for the API reference: render the package's doctest examples as code.

The docstrings write ``Example:`` (an admonition in Google style, whose text is Markdown) and sometimes put
``>>>`` lines in the free text. Markdown then reads doctest output such as ``[1, 1, 2, 2]`` as link references.
This extension turns ``Example:`` into the ``Examples:`` section and wraps free ``>>>`` runs in one, so griffe parses
them as code, and renders Sphinx roles (``:class:`~pkg.Name```, ``:meth:`name```) as inline code. The source files are
not changed.
"""

import re

import griffe

PROMPT = re.compile(r"^(>>>|\.\.\.)( |$)")
ROLE = re.compile(r":(?:class|meth|func|mod|attr|obj|data|exc):`(~?)([^`]+)`")


def _role(match):
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def fix_docstring(text):
    lines = ROLE.sub(_role, text).splitlines()
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.fullmatch(r"Example:\s*", line):
            out.append("Examples:")
            i += 1
            continue
        if PROMPT.match(line):  # an unindented doctest run in the free text: make it an Examples section
            if out and out[-1].strip():
                out.append("")
            out.append("Examples:")
            while i < len(lines) and lines[i].strip():
                out.append("    " + lines[i])
                i += 1
            out.append("")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestExamples(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fix_docstring(obj.docstring.value)

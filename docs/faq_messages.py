"""The error and warning messages of the package, read from its source: what the FAQ quotes.

    python docs/faq_messages.py            # every message, wrapped as the FAQ's ```text blocks

Each message is rendered as a template: the text of the string (f-strings and concatenations joined), with
``{name}`` where a value is filled in at run time. The FAQ (docs/faq.md) quotes them in ```text blocks, whole or
in part (a leading or trailing "…" marks a part), wrapped at 88 characters; tests/test_docs.py checks that every
such block is a piece of one of these templates, so the FAQ cannot quote a message the code no longer gives.
"""

import ast
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pml_divide_conquer"
WIDTH = 88
# calls whose (last) string argument is a warning message
WARN_CALLS = {"warn", "_warn_once"}


def _short(node):
    """A readable placeholder name for the value of ``node``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        if node.attr == "__name__" and isinstance(node.value, ast.Call) and node.value.args:
            return f"type of {_short(node.value.args[0])}"
        return node.attr
    if isinstance(node, ast.Subscript):
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
        return _short(node.value)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "len" and node.args:
        return f"number of {_short(node.args[0])}"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _short(node.func.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
        return _short(node.args[0])
    return "…"


def render(node):
    """The template of a string expression, or None if ``node`` is not one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{" + _short(value.value) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = render(node.left), render(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else "{…}") + (right if right is not None else "{…}")
    if isinstance(node, ast.IfExp):
        body = render(node.body)
        return "{…}" if body is None else body
    return None


def _message_of_call(call):
    if not isinstance(call, ast.Call):
        return None
    for arg in reversed(call.args):
        text = render(arg)
        if text is not None:
            return text
    return None


def templates(package=PACKAGE):
    """{file name: [message templates]} of every ``raise X(...)`` and ``warn(...)`` in the package."""
    out = {}
    for path in sorted(Path(package).glob("*.py")):
        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise):
                text = _message_of_call(node.exc)
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                text = _message_of_call(node) if name in WARN_CALLS else None
            else:
                continue
            if text and text not in found:
                found.append(text)
        if found:
            out[path.name] = found
    return out


def normalise(text):
    return " ".join(text.split())


def is_quoted_from(quote, all_templates):
    """True when ``quote`` (a FAQ text block, possibly with "…" at either end) is a piece of a template."""
    quote = normalise(quote).strip("…").strip()
    return bool(quote) and any(quote in normalise(t) for ts in all_templates.values() for t in ts)


def main():
    for name, found in templates().items():
        print(f"## {name}\n")
        for text in found:
            print("```text\n" + "\n".join(textwrap.wrap(text, WIDTH, break_on_hyphens=False)) + "\n```\n")


if __name__ == "__main__":
    sys.exit(main())

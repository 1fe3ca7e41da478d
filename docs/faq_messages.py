"""The error and warning messages of the package, read from its source: what the FAQ quotes.

    python docs/faq_messages.py            # every message, wrapped as the FAQ's ```text blocks

Each message is rendered as a template: the text of the string (f-strings and concatenations joined), with
``{name}`` where a value is filled in at run time. Messages kept in module-level constants (``NONFINITE = "..."``)
count too, and a message that names the calls of the loop in use (``{hints.setup}``, ``{hints.end_epoch}``,
``{batch_size_holder}``: a ``LoopHints`` of training.py or of an integration) is also rendered once per loop, with
that loop's text filled in, as users see it. The FAQ (docs/faq.md) quotes them in ```text blocks, whole or
in part (a leading or trailing "…" marks a part), wrapped at 88 characters; tests/test_faq.py checks that every
such block is a piece of one of these templates, so the FAQ cannot quote a message the code no longer gives.
"""

import ast
import re
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pml_divide_conquer"
WIDTH = 88
# calls whose (last) string argument is a warning message
WARN_CALLS = {"warn", "warn_once", "warn_deprecated"}
# functions that build a message and return it (for a warning or an error raised elsewhere)
MESSAGE_FUNCTIONS = {"skipped", "unreached_learners", "shortfall"}
# module-level constants holding a message (e.g. routing.NONFINITE): upper-case names, text with spaces
CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")
# the fields of training.LoopHints: how messages name the calls of the loop in use
HINT_FIELDS = ("setup", "end_epoch", "batch_size_holder")


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


def _loop_hints(trees):
    """The texts of every ``LoopHints(...)`` in the package: [{field: text}], one dict per kind of loop."""
    found = []
    for tree in trees:
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", None)) == "LoopHints":
                hints = {kw.arg: render(kw.value) for kw in node.keywords if kw.arg in HINT_FIELDS}
                if hints and all(v is not None for v in hints.values()):
                    found.append(hints)
    return found


def _with_each_loop(text, all_hints):
    """``text`` with its ``{setup}`` / ``{end_epoch}`` / ``{batch_size_holder}`` filled in for each loop."""
    out = []
    for hints in all_hints:
        filled = text
        for name, value in hints.items():
            filled = filled.replace("{" + name + "}", value)
        if filled != text and filled not in out:
            out.append(filled)
    return out


def templates(package=PACKAGE):
    """{file name (relative to the package): [message templates]} of every ``raise X(...)``, ``warn(...)``,
    message constant and message function (``MESSAGE_FUNCTIONS``) in the package, integrations included."""
    files = sorted(Path(package).rglob("*.py"))
    trees = {path: ast.parse(path.read_text()) for path in files}
    all_hints = _loop_hints(trees.values())
    out = {}
    for path, tree in trees.items():
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise):
                text = _message_of_call(node.exc)
            elif isinstance(node, ast.FunctionDef) and node.name in MESSAGE_FUNCTIONS:
                texts = [render(r.value) for r in ast.walk(node) if isinstance(r, ast.Return) and r.value is not None]
                found.extend(t for t in texts if t and t not in found)
                continue
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                text = _message_of_call(node) if name in WARN_CALLS else None
            else:
                continue
            for t in [text] + (_with_each_loop(text, all_hints) if text else []):
                if t and t not in found:
                    found.append(t)
        for node in tree.body:  # message constants
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                text = render(node.value)
                if isinstance(target, ast.Name) and CONSTANT.match(target.id) and text and " " in text:
                    if text not in found:
                        found.append(text)
        if found:
            out[path.relative_to(package).as_posix()] = found
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

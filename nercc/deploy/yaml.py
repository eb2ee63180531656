"""A small YAML writer for manifests (dicts, lists, strings, numbers, booleans): no PyYAML needed.

Strings are written as JSON strings (valid YAML double-quoted scalars), so nothing is ever re-typed by a
YAML reader ("8001" stays a string, "true" stays a string).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, List


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        if "\n" in value:
            raise ValueError("multi-line strings are written with literal blocks: use block(...)")
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


class Block(str):
    """A multi-line string written as a literal block (``|``), e.g. a file inside a ConfigMap."""


def _lines(value: Any, indent: int) -> List[str]:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "{}"]
        out = []
        for key, item in value.items():
            head = f"{pad}{json.dumps(str(key)) if not _plain_key(key) else key}:"
            if isinstance(item, Block):
                out.append(head + " |")
                out += [(" " * (indent + 2) + line) if line else "" for line in item.rstrip("\n").split("\n")]
            elif isinstance(item, (dict, list)) and item:
                out.append(head)
                out += _lines(item, indent + 2)
            else:
                out.append(f"{head} {_scalar(item) if not isinstance(item, (dict, list)) else ('{}' if isinstance(item, dict) else '[]')}")
        return out
    if isinstance(value, list):
        if not value:
            return [pad + "[]"]
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = _lines(item, indent + 2)
                out.append(pad + "- " + inner[0].lstrip())
                out += inner[1:]
            else:
                out.append(pad + "- " + _scalar(item))
        return out
    return [pad + _scalar(value)]


def _plain_key(key: Any) -> bool:
    text = str(key)
    return bool(text) and all(c.isalnum() or c in "-_./" for c in text) and not text[0].isdigit() \
        and text.lower() not in ("true", "false", "null", "yes", "no", "on", "off", "y", "n")


def dump(document: dict) -> str:
    return "\n".join(_lines(document, 0)) + "\n"


def dump_all(documents: Iterable[dict]) -> str:
    return "---\n".join(dump(d) for d in documents)

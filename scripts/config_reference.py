#!/usr/bin/env python3
"""Regenerates the configuration-key tables of docs/reference.md from
config/default.toml, so the reference lists every key with its default and
the comment that documents it.

The tables replace everything between the lines
`<!-- config-keys:start -->` and `<!-- config-keys:end -->`; the rest of the
reference is left as it is. `--check` only compares (exit 1 when the
reference is out of date). tests/api/docs.rs checks that every key of
config/default.toml is in the reference.

Usage: python3 scripts/config_reference.py [--check]
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "config" / "default.toml"
REFERENCE = ROOT / "docs" / "reference.md"
START = "<!-- config-keys:start -->"
END = "<!-- config-keys:end -->"

SECTION = re.compile(r"^\[([A-Za-z0-9_.]+)\]\s*$")
KEY = re.compile(r"^([A-Za-z0-9_]+)\s*=\s*(.+?)\s*$")


def cell(text: str) -> str:
    return text.replace("|", "\\|").strip()


def parse(lines):
    """(sections, integration template): sections is a list of
    (name, [(key, default, meaning)]); the template is the commented
    `[integrations.NAME]` block at the end of the file."""
    sections = []
    comment = []
    current = None
    template = []
    in_template = False
    for raw in lines:
        line = raw.rstrip("\n")
        if in_template:
            template.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
            continue
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text.startswith("[integrations.NAME]"):
                in_template = True
                template.append(text)
                continue
            comment.append(text)
            continue
        m = SECTION.match(stripped)
        if m:
            current = (m.group(1), [])
            sections.append(current)
            comment = []
            continue
        m = KEY.match(stripped)
        if m and current is not None:
            meaning = " ".join(t for t in comment if t)
            current[1].append((m.group(1), m.group(2), meaning))
            comment = []
    return sections, template


def render(sections, template):
    out = [START, ""]
    out.append(
        "Generated from `config/default.toml` by `scripts/config_reference.py`; "
        "do not edit by hand."
    )
    out.append("")
    for name, keys in sections:
        out.append(f"#### `[{name}]`")
        out.append("")
        out.append("| key | default | meaning, unit |")
        out.append("| --- | --- | --- |")
        for key, default, meaning in keys:
            out.append(f"| `{name}.{key}` | `{cell(default)}` | {cell(meaning)} |")
        out.append("")
    out.append("#### `[integrations.NAME]`")
    out.append("")
    out.append(
        "None are configured by default. Each integration is a table with these "
        "keys (the defaults are shown; `base_url` is required):"
    )
    out.append("")
    out.append("```toml")
    while template and not template[-1].strip():
        template.pop()
    out.extend(template)
    out.append("```")
    out.append("")
    out.append(END)
    return "\n".join(out)


def main() -> int:
    sections, template = parse(DEFAULTS.read_text(encoding="utf-8").splitlines())
    generated = render(sections, template)
    text = REFERENCE.read_text(encoding="utf-8")
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        print(f"{REFERENCE}: markers {START} / {END} not found", file=sys.stderr)
        return 2
    updated = text[:start] + generated + text[end + len(END):]
    if "--check" in sys.argv[1:]:
        if updated != text:
            print(
                "docs/reference.md is out of date with config/default.toml; "
                "run python3 scripts/config_reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    REFERENCE.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

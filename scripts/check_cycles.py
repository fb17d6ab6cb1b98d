#!/usr/bin/env python3
"""Fail on import cycles between the crate's top-level modules.

A top-level module is a file `src/x.rs` or a folder `src/x/` (`src/lib.rs`
and `src/main.rs` are the roots, not modules). An edge `a -> b` is any
`crate::b` path (in a `use`, grouped `use crate::{b, c::d}`, or inline) or a
`super::` chain that climbs to the crate root and names `b`, written in a file
of module `a`. Comments are ignored; `#[cfg(test)]` code counts like any other.

Usage: check_cycles.py [SRC_DIR]   (default: src next to this script's parent)
Prints each cycle (a strongly connected set of modules) with every edge inside
it and the file:line of each reference that makes the edge; exits 1 if there is
any cycle, 0 otherwise, 2 on a usage error.
"""

import os
import re
import sys
from collections import defaultdict

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip_comments(text):
    """Blank out `//` and `/* */` comments and string/char literals, keeping
    newlines so that offsets still map to the same line numbers."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def brace_items(text, start):
    """Given `text[start] == '{'`, return [(offset, first_ident)] for each
    top-level item of the group."""
    items, depth, i, expect = [], 0, start, True
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            if depth == 1:
                expect = True
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
        elif c == "," and depth == 1:
            expect = True
        elif depth == 1 and expect and (c.isalpha() or c == "_"):
            m = IDENT.match(text, i)
            items.append((i, m.group(0)))
            expect = False
            i = m.end()
            continue
        i += 1
    return items


def module_files(src):
    """Yield (module, path, depth) for every .rs file of every top-level
    module; depth is how many `super::` reach the crate root from the file."""
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isfile(path) and name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            yield name[:-3], path, 1
        elif os.path.isdir(path) and name != "bin":
            for root, _dirs, files in os.walk(path):
                for f in sorted(files):
                    if f.endswith(".rs"):
                        rel = os.path.relpath(os.path.join(root, f), src).split(os.sep)
                        depth = len(rel) - (1 if f == "mod.rs" else 0)
                        yield name, os.path.join(root, f), depth


def edges(src):
    """Return {(a, b): [file:line, ...]} for every reference from a to b."""
    files = list(module_files(src))
    modules = {m for m, _, _ in files}
    found = defaultdict(list)
    ref = re.compile(r"(?<![A-Za-z0-9_$])(crate|(?:super::)+)(::)?")
    for mod, path, depth in files:
        with open(path, encoding="utf-8") as fh:
            text = strip_comments(fh.read())
        for m in ref.finditer(text):
            head = m.group(1)
            if head == "crate":
                if not m.group(2):
                    continue
                pos = m.end()
            else:
                if head.count("super::") < depth:
                    continue  # stays inside this module
                pos = m.end()
            targets = []
            if pos < len(text) and text[pos] == "{":
                targets = brace_items(text, pos)
            else:
                im = IDENT.match(text, pos)
                if im:
                    targets = [(pos, im.group(0))]
            for off, target in targets:
                if target in modules and target != mod:
                    line = text.count("\n", 0, off) + 1
                    found[(mod, target)].append(f"{os.path.relpath(path)}:{line}")
    return found


def strongly_connected(nodes, succ):
    """Tarjan's algorithm; returns the components with more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main(argv):
    if len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    src = argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if not os.path.isdir(src):
        print(f"check_cycles: no such directory: {src}", file=sys.stderr)
        return 2
    found = edges(src)
    succ = defaultdict(set)
    nodes = set()
    for a, b in found:
        succ[a].add(b)
        nodes.update((a, b))
    cycles = strongly_connected(nodes, succ)
    if not cycles:
        print(f"check_cycles: no import cycles among {len(nodes)} modules")
        return 0
    for comp in cycles:
        print(f"import cycle among: {', '.join(comp)}")
        members = set(comp)
        for (a, b), where in sorted(found.items()):
            if a in members and b in members:
                print(f"  {a} -> {b}: {', '.join(where)}")
    print(f"check_cycles: {len(cycles)} cycle(s); modules must import downwards only (see docs/architecture.md)")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

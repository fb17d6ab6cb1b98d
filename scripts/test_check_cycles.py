#!/usr/bin/env python3
"""Tests of scripts/check_cycles.py on small fixture trees (stdlib unittest).

Run: python3 scripts/test_check_cycles.py
"""

import io
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_cycles  # noqa: E402


def tree(files):
    """A temporary `src/` holding `files` ({relative path: text})."""
    root = tempfile.TemporaryDirectory()
    for rel, text in files.items():
        path = os.path.join(root.name, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return root


def run(files):
    with tree(files) as src:
        out = io.StringIO()
        with redirect_stdout(out):
            code = check_cycles.main(["check_cycles.py", src])
        return code, out.getvalue()


class CheckCycles(unittest.TestCase):
    def test_finds_a_two_module_cycle_with_its_edges(self):
        code, out = run({
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b.rs": "pub struct B;\n\nfn f() -> crate::a::A { crate::a::A }\n",
        })
        self.assertEqual(code, 1, out)
        self.assertIn("import cycle among: a, b", out)
        self.assertIn("a -> b: ", out)
        self.assertIn("a.rs:1", out)
        self.assertIn("b -> a: ", out)
        self.assertIn("b.rs:3", out)

    def test_finds_a_cycle_through_a_folder_and_grouped_use(self):
        code, out = run({
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
            "a.rs": "use crate::{\n    b::B,\n    c::C,\n};\n",
            "b.rs": "pub struct B;\n",
            "c/mod.rs": "mod inner;\npub struct C;\n",
            "c/inner.rs": "use super::super::a::X;\nuse super::C;\n",
        })
        self.assertEqual(code, 1, out)
        self.assertIn("import cycle among: a, c", out)
        self.assertNotIn("b", out.split("import cycle among:")[1].splitlines()[0])

    def test_downward_imports_comments_and_strings_pass(self):
        code, out = run({
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": (
                "//! See [`crate::a`].\n"
                "/* crate::a::A */\n"
                "const S: &str = \"crate::a::A\";\n"
                "pub(crate) struct B;\n"
                "#[cfg(test)]\nmod tests { use super::*; }\n"
            ),
        })
        self.assertEqual(code, 0, out)
        self.assertIn("no import cycles", out)

    def test_the_crate_itself_has_no_cycles(self):
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
        out = io.StringIO()
        with redirect_stdout(out):
            code = check_cycles.main(["check_cycles.py", src])
        self.assertEqual(code, 0, out.getvalue())


if __name__ == "__main__":
    unittest.main()

"""The project speaks of itself only: no words of its development process in the code,
tests, benchmarks or docs; sources are the paper (section, equation) or the official
code (file)."""

from __future__ import annotations

import re

from tests.conftest import REPO

#: "issue <n>" and the development notes' section marks
PROCESS_WORDS = re.compile(r"issue [0-9]|" + "SPEC" + " §", re.IGNORECASE)
PLACES = ["pipeline", "rules", "tests", "bench", "docs", "README.md", "Snakefile"]
SUFFIXES = {".py", ".smk", ".md", ".yaml", ".rst", ""}


def test_no_development_process_words():
    found = []
    for place in PLACES:
        root = REPO / place
        files = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        for path in files:
            if not path.is_file() or path.suffix not in SUFFIXES or "output" in path.parts:
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if PROCESS_WORDS.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)

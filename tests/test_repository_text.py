"""The repository speaks for itself: no text in it sends the reader to a file outside it
(a sibling folder's notes) or names a path of one machine (a home or work folder), in code, docs,
configuration or sample output. State the fact and its original source (a URL, a
package's documentation) instead; print paths relative to the current directory."""

from __future__ import annotations

import re
from pathlib import Path

from tests.repo_files import REPO, repository_files

# The patterns are spelt so that this file does not match them itself.
FORBIDDEN = {
    "a file outside the repository": re.compile(r"\.\./+shared\b"),
    "an absolute path of one machine": re.compile(r"(?<![\w.~-])/(?:work|root|home)/"),
}
# path -> reason, only where a match is truly necessary.
ALLOWED: dict[str, str] = {}


def _text_files() -> list[Path]:
    files = []
    for rel in repository_files():
        path = REPO / rel
        if rel in ALLOWED or path.is_symlink():
            continue
        if b"\0" not in path.read_bytes()[:8192]:  # binary files (images, checkpoints) have NUL bytes
            files.append(path)
    return files


def test_no_text_points_outside_the_repository() -> None:
    hits = []
    for path in _text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {what}: {line.strip()[:120]}")
    assert not hits, "text that only makes sense on one machine:\n" + "\n".join(hits)


def test_the_patterns_catch_what_they_are_for() -> None:
    bad = ["see ../" + "shared/NOTES.md", "(/" + "work/main/.buildflow/local)", "/" + "root/.cache/pip"]
    good = ["~/photos", "https://example.com/home/x", ".buildflow/local", "gs://bucket/work/x"]
    assert all(any(p.search(s) for p in FORBIDDEN.values()) for s in bad)
    assert not any(p.search(s) for p in FORBIDDEN.values() for s in good)

"""The README's lists of what loads are the code's lists."""

from __future__ import annotations

import re
from pathlib import Path

from macllm.formats.gguf_blocks import LAYOUTS
from macllm.models import SUPPORTED

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_architectures_line_names_exactly_the_supported_ones():
    line = next(x for x in README.splitlines() if x.startswith("Supported architectures:"))
    assert set(re.findall(r"`(\w+)`", line)) == set(SUPPORTED)


def test_exact_gguf_types_are_the_ones_imported_without_loss():
    start = README.index("exact types")
    listed = re.findall(r"\b(Q\d_[01K])\b", README[start:README.index("move across unchanged", start)])
    assert set(listed) == set(LAYOUTS)


def test_every_test_file_the_promises_name_exists():
    # docs/promises.md says which tests enforce each promise; a renamed or deleted test must update it.
    repo = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"`(tests/[\w/]+\.py)`", (repo / "docs" / "promises.md").read_text()))
    missing = sorted(name for name in named if not (repo / name).is_file())
    assert named and not missing, missing

"""docs/data.md's data-safety table is what the cases print: scripts/bad_input_table.py runs
each one; this test runs them again and compares (regenerate with that script)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_data_safety_table_matches_the_cases():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bad_input_table as table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    results = table.results()
    assert all(rc == 2 and msg for _, rc, msg in results), results
    doc = (ROOT / "docs" / "data.md").read_text()
    block = re.search(r"<!-- bad-input-safety:begin -->\n(.*?)<!-- bad-input-safety:end -->",
                      doc, re.S)
    assert block, "docs/data.md lost its bad-input-safety markers"
    assert block.group(1) == table.render(results), (
        "docs/data.md is stale: run python scripts/bad_input_table.py")

"""Issue 31's cases, each a test: RG1_UNCI, RG3_UNCI, a 512² crop of RG1, a 12-bit image in a
16-bit PNG and a CT slice against the shipped runs and a run trained on other data are written,
warned or refused naming the fix exactly as docs/io_errors.md's generated table says
(scripts/trust_table.py writes it; regenerate it there when a message changes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import trust_table as table
finally:
    sys.path.remove(str(ROOT / "scripts"))

pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(
    not (table.STUDENT / "config.json").is_file()
    or __import__("pydicom.data").data.get_testdata_file("RG1_UNCI.dcm", download=False) is None,
    reason="needs the shipped runs and pydicom-data")

NEEDLES = {  # what each refusal must name (beyond the table's exact text)
    ("rg1", ()): ("14.4x", "--size learned", "--size native", "--native --crop"),
    ("rg3", ()): ("13.8x", "--size learned", "--size native"),
    ("png12", ()): ("--input-bits 12",),
    ("ct", ("--allow-modality", "CT")): ("--intensity match", "--intensity as-is"),
}


def _documented_rows() -> list[str]:
    doc = table.DOC.read_text()
    block = re.search(r"<!-- translate-trust:begin -->\n(.*?)<!-- translate-trust:end -->",
                      doc, re.S)
    assert block, "docs/io_errors.md lost its translate-trust markers"
    return block.group(1).splitlines()[len(table.HEADER):]


@pytest.mark.parametrize("k", range(len(table.CASES)),
                         ids=[f"{c.input}|{c.run}|{' '.join(c.flags)}" for c in table.CASES])
def test_each_trust_case_is_as_documented(k):
    case = table.CASES[k]
    rc, outcome, lines = table.run_case(case)
    assert outcome == case.expect, lines
    assert rc == (2 if outcome == "refused" else 0)
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == (outcome == "refused"), lines  # a refusal is ONE line
    for needle in NEEDLES.get((case.input, case.flags), ()):
        assert needle in (errors or lines)[-1], (needle, lines)
    rows = _documented_rows()
    assert len(rows) == len(table.CASES), "run python scripts/trust_table.py"
    assert rows[k] == table.row(case, rc, outcome, lines), (
        "docs/io_errors.md is stale: run python scripts/trust_table.py")

"""docs/errors.md names a test for every way bnorm can fail: each named test must exist (a
pytest function, a C suite or a C test function in the named file), and every row of the error
tables must name at least one test."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "errors.md"
REF = re.compile(r"`(tests/[\w/]+\.(?:py|c))::(\w+)`")


def defines(path, name):
    text = (REPO / path).read_text()
    if path.endswith(".py"):
        return re.search(rf"^def {name}\(", text, re.M) is not None
    return re.search(rf"BN_SUITE\({name}\)|^static \w+ {name}\(", text, re.M) is not None


def test_every_named_test_exists():
    refs = REF.findall(DOC.read_text())
    assert len(refs) > 60
    missing = [f"{p}::{n}" for p, n in set(refs) if not defines(p, n)]
    assert missing == []


def test_every_row_names_a_test():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    status_table = [r for r in rows if re.match(r"\| -?\d+ \| `BN_", r)]
    assert len(status_table) == 11
    body = [r for r in rows if r not in status_table and not r.startswith(("| condition", "| value"))]
    bare = [r for r in body if not REF.search(r) and "see the tables above" not in r
            and "| same |" not in r]
    assert bare == []


def test_every_status_is_documented():
    header = (REPO / "include" / "bnorm.h").read_text()
    names = re.findall(r"^\s+(BN_(?:OK|ERR_\w+)) = (-?\d+)", header, re.M)
    doc = DOC.read_text()
    for name, value in names:
        assert f"| {value} | `{name}` |" in doc, name

"""The tolerance table in clnfdiag.compare.tolerances' docstring says what the shipped TOML holds."""
from __future__ import annotations

import clnfdiag.compare.tolerances as tolerances_module
from clnfdiag.compare.tolerances import default_tolerances


def _doc_rows() -> dict[str, tuple[str, str, str, str]]:
    lines = tolerances_module.__doc__.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    assert len(rules) >= 3, "the docstring's table is missing"
    rows = {}
    for line in lines[rules[1] + 1:rules[2]]:
        kind, atol, rtol, patol, prtol = line.split()
        rows[kind] = (atol, rtol, patol, prtol)
    return rows


def test_docstring_table_equals_the_shipped_toml():
    tol = default_tolerances()
    rows = _doc_rows()
    assert set(rows) == set(tol.isolated)
    for kind, (atol, rtol, patol, prtol) in rows.items():
        assert (float(atol), float(rtol)) == (tol.isolated[kind].atol, tol.isolated[kind].rtol), kind
        prop = tol.propagated.get(kind)
        if prop is None:
            assert (patol, prtol) == ("same", "same"), kind
        else:
            assert (float(patol), float(prtol)) == (prop.atol, prop.rtol), kind

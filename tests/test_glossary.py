"""The glossary's "shown in" column is right: every notebook it names uses the symbol."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "docs" / "glossary.md"


def glossary_rows() -> list[dict]:
    """The table rows of the glossary: term, symbol column and the notebooks linked."""
    rows = []
    for line in GLOSSARY.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("term", "") or set(cells[0]) <= {"-"}:
            continue
        term, symbol, _, shown = cells
        notebooks = re.findall(r"\]\(\.\./notebooks/([^)]+\.ipynb)\)", shown)
        rows.append({"term": term, "symbol": symbol, "notebooks": notebooks})
    return rows


def symbol_forms(term: str, symbol: str) -> list[str]:
    """What a notebook that shows the entry must contain (one of them), without braces.

    Each LaTeX symbol of the column with its indices (``\\omega_m = N / n_m`` -> ``\\omega_m``,
    ``L_{pix}^m`` -> ``L_pix^m``, also as ``L^m_pix``); a bare letter (``$P$``) is too common
    to tell, so the code names in backticks stand for it (``setting="idt_drop"`` ->
    ``idt_drop``), and the term itself.
    """
    code_free = re.sub(r"`[^`]*`", "", symbol)
    codes = [
        re.sub(r"\(.*", "", code.split("=")[-1].strip("\"'"))
        for code in re.findall(r"`([^`]+)`", symbol)
    ]
    forms = []
    for expr in re.findall(r"\$([^$]+)\$", code_free):
        found = re.match(r"\s*((?:\\hat\s*)?\\?[A-Za-z]+(?:[_^](?:\{[^}]*\}|[A-Za-z0-9]))*)", expr)
        if not found:
            continue
        name = re.sub(r"\s+", " ", found.group(1)).replace("{", "").replace("}", "")
        if re.fullmatch(r"[A-Za-z]", name):  # a bare letter: the code names and the term
            forms += codes + [term]
            continue
        forms.append(name)
        parts = re.fullmatch(r"(.+?)(_[^_^]+)(\^[^_^]+)", name)
        if parts:  # D_n^m is also written D^m_n
            forms.append(parts.group(1) + parts.group(3) + parts.group(2))
    if not forms:
        forms = codes
    return forms or [term]


ROWS = glossary_rows()


def test_the_glossary_has_its_tables():
    assert len(ROWS) >= 30
    assert all(row["notebooks"] for row in ROWS), [r["term"] for r in ROWS if not r["notebooks"]]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["term"])
def test_each_notebook_named_shows_the_symbol(row):
    forms = symbol_forms(row["term"], row["symbol"])
    for name in row["notebooks"]:
        path = ROOT / "notebooks" / name
        assert path.is_file(), f"{row['term']}: {name} does not exist"
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        text = re.sub(r"\s+", " ", text).replace("{", "").replace("}", "")
        assert any(f in text for f in forms), f"{row['term']}: none of {forms} in {name}"


def test_symbol_forms():
    assert symbol_forms("x", "$\\omega_m = N / n_m$ (`omega`)") == ["\\omega_m"]
    assert symbol_forms("x", "$L_{pix}^m$ (`pixel_distillation`)") == ["L_pix^m", "L^m_pix"]
    assert symbol_forms("x", "$\\hat D_m$ (`distance`)") == ["\\hat D_m"]
    assert symbol_forms("teacher", "$P$ (`teacher`)") == ["teacher", "teacher"]
    assert symbol_forms("x", '`setting="idt_drop"`') == ["idt_drop"]
    assert symbol_forms("self-distillation", "") == ["self-distillation"]

"""The report's two number formats, used by every table and sentence of both reports: a share (an accuracy, a
macro-F1, an error) as a percentage, and a difference of two shares in percentage points. The decimals are the
caller's (the single run's tables at 2, sentences and the study at 1); the unit goes beside the number (unit=True)
or in the table's header."""

from __future__ import annotations


def percent(value: float, decimals: int | None = 1, unit: bool = False) -> str:
    """0.1234 -> '12.3' ('12.3%' with the unit); decimals None: the shortest form, 0.02 -> '2'."""
    text = f"{value * 100:g}" if decimals is None else f"{value * 100:.{decimals}f}"
    return text + "%" if unit else text


def points(value: float, decimals: int | None = 1, signed: bool = True, unit: bool = False) -> str:
    """A difference of two shares in percentage points: 0.0123 -> '+1.2' ('+1.2 points' with the unit); unsigned
    for a size or a spread (signed=False: '1.2'); decimals None: the shortest form."""
    if decimals is None:
        text = f"{value * 100:{'+' if signed else ''}g}"
    else:
        text = f"{value * 100:{'+' if signed else ''}.{decimals}f}"
    return text + " points" if unit else text

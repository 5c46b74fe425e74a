"""Date cuts: the values of ``val_start`` / ``test_start`` (``--val-start`` / ``--test-start``).

config.py validates them and stores the canonical text; data/windows.py turns them into split
boundaries per symbol. Only errors.py is imported, so both can use this module.
"""
from __future__ import annotations

import datetime
import re
import typing
from typing import Any

from .errors import ConfigError


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to one short line: a user can paste a very long value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The values of val_start / test_start (--val-start / --test-start), read by data/windows.py:
#     2016-01-01                          every symbol
#     2016-01-01T09:30                    a time of day too (UTC, like every time stamp here)
#     GOOG=2012-06-01,SPX=2017-01-01      per symbol, for files covering different years
#     GOOG=2012-06-01,*=2016-01-01        ... with a default for every other symbol
# The configuration (and so every checkpoint) stores the canonical text, each time spelt out in
# full, so that two spellings of one setting compare equal on resume.
ANY_SYMBOL = "*"
_CUT_EXPECTED = ("an ISO date or time (2016-01-01, 2016-01-01T09:30) for every symbol, or per symbol "
                 "SYM=DATE,SYM=DATE with an optional *=DATE for the others")
_EPOCH = datetime.datetime(1970, 1, 1)
# Time stamps are int64 nanoseconds: beyond these years they wrap around silently.
_FIRST_YEAR, _LAST_YEAR = 1678, 2261


def parse_cuts(text: str, key: str) -> dict[str, int]:
    """{symbol or ``ANY_SYMBOL``: cut time in ns since the epoch, UTC} of one ``val_start`` /
    ``test_start`` value; a ConfigError naming ``key``, the value and the expected form when it is
    malformed. A symbol name may itself hold ``=`` (``ES=F=2016-01-01``): the last one separates."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid value for '{key}': {_short(text)}: {why} (expected {_CUT_EXPECTED})",
                           key)

    if not isinstance(text, str) or not text.strip():
        raise bad("empty")
    out: dict[str, int] = {}
    entries = [e.strip() for e in text.split(",")]
    for entry in entries:
        if not entry:
            raise bad("an empty entry between commas")
        if "=" in entry:
            name, _, when = (part.strip() for part in entry.rpartition("="))
            if not name:
                raise bad(f"entry {_short(entry)} names no symbol before '='")
        elif len(entries) == 1:
            name, when = ANY_SYMBOL, entry
        else:
            raise bad(f"entry {_short(entry)} names no symbol (write SYM=DATE, or *=DATE for the others)")
        if name in out:
            raise bad(f"{_short(name)} appears twice")
        out[name] = _cut_ns(when, bad)
    return out


# The forms accepted, checked before datetime.fromisoformat: it reads "2011-06-01+02:00" as
# 02:00 on that day (any character may separate date and time), silently moving the cut.
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?)?"
                       r"(?P<zone>Z|[+-]\d{2}(?::?\d{2})?)?")


def _cut_ns(when: str, bad: typing.Callable[[str], ConfigError]) -> int:
    form = _ISO_TIME.fullmatch(when)
    if form is None:
        raise bad(f"{_short(when)} is not an ISO date or time")
    if form["zone"]:
        raise bad(f"{_short(when)} carries a time zone; times here are UTC, written without one")
    try:
        t = datetime.datetime.fromisoformat(when)
    except ValueError:
        raise bad(f"{_short(when)} is not an ISO date or time") from None
    if not _FIRST_YEAR <= t.year <= _LAST_YEAR:
        raise bad(f"{_short(when)} is outside the years {_FIRST_YEAR} to {_LAST_YEAR} that time stamps cover")
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def cut_time_text(ns: int) -> str:
    """A cut time as canonical ISO text: seconds (``2016-01-01T00:00:00``), microseconds only
    where the value has them. UTC, without a zone suffix, like every time stamp here."""
    t = _EPOCH + datetime.timedelta(microseconds=ns // 1000)
    return t.isoformat(timespec="microseconds" if t.microsecond else "seconds")


def canonical_cuts(text: str, key: str) -> str:
    """The value with every time spelt out in full (``GOOG=2012-06-01T00:00:00,*=...``), the
    symbols sorted, ``*`` last and entries equal to it dropped, or a ConfigError naming ``key``."""
    cuts = parse_cuts(text, key)
    if ANY_SYMBOL in cuts:  # an entry equal to the default says nothing the default does not
        cuts = {n: ns for n, ns in cuts.items() if n == ANY_SYMBOL or ns != cuts[ANY_SYMBOL]}
    if list(cuts) == [ANY_SYMBOL]:  # "*=DATE" alone says the same as "DATE"
        return cut_time_text(cuts[ANY_SYMBOL])
    # Entries in one order (symbols sorted, the default last): the order they were typed in
    # means nothing, and a resume compares this text.
    names = sorted(n for n in cuts if n != ANY_SYMBOL) + [n for n in cuts if n == ANY_SYMBOL]
    return ",".join(f"{name}={cut_time_text(cuts[name])}" for name in names)


def cut_for(cuts: dict[str, int], symbol: str, key: str) -> int:
    """The cut of ``symbol``: its own entry, else the ``*`` default; a ConfigError naming the
    symbol when it has neither (a silent default would put it in the wrong split)."""
    if symbol in cuts:
        return cuts[symbol]
    if ANY_SYMBOL in cuts:
        return cuts[ANY_SYMBOL]
    raise ConfigError(f"'{key}' gives no date for symbol {symbol} (add {symbol}=DATE, or *=DATE for every "
                      f"symbol without its own)", key)

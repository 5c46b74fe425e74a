"""Dates and times of OHLCV inputs: the one format a whole column is written in (ISO 8601, day-first
or month-first, spreadsheet dates, epoch numbers, time zones), parsed to int64 nanoseconds since the
epoch, and the message that names the first value not in that format. Used by the readers of one
file per symbol (:mod:`.sources`) and of panels (:mod:`.panel`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

# datetime64[ns] covers 1677-09-21 00:12:43.145224192 to 2262-04-11 23:47:16.854775807.
_NS_MIN, _NS_MAX = np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max  # int64 min is NaT
SUPPORTED_TIME_RANGE = "1677-09-22 to 2262-04-11"
_EXPECTED_TIME = "expected a date such as 2024-01-31 or 2024-01-31 09:30:00"


# A date written A<sep>B<sep>year (01/02/2024, 1.2.2024, 01-02-24): A and B are a day and a month in
# an order only the whole column can tell. Anything may follow after a space or a T (a time of day).
_AB_DATE = re.compile(r"^(\d{1,2})([/.\-])(\d{1,2})\2(\d{4}|\d{2})(?=$|[ T])")
_ISO_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}(?=$|[ T])")
# A time zone at the end of a date/time text: Z, +02:00, -0500 (the sign is never part of a date).
_ZONE_SUFFIX = r"(?:\d(?:Z|z)|[+-]\d{2}:?\d{2})$"
# Tried on the first value when pandas cannot infer its format (spreadsheet dates such as 02-Jan-24).
_MORE_FORMATS = ("%d-%b-%y", "%d-%b-%Y", "%d %b %y", "%d %b %Y", "%b %d, %Y", "%b %d %Y", "%d/%b/%Y",
                 "%d-%B-%Y", "%d %B %Y", "%B %d, %Y")
_FORMAT_WORDS = (("%Y", "YYYY"), ("%y", "YY"), ("%m", "MM"), ("%d", "DD"), ("%H", "hh"), ("%I", "hh"),
                 ("%M", "mm"), ("%S", "ss"), ("%f", "ffffff"), ("%z", "+hh:mm"), ("%p", "AM/PM"),
                 ("%b", "Mon"), ("%B", "Month"), ("%a", "Day"), ("%A", "Day"))


@dataclass(frozen=True)
class TimeFormat:
    """The one format of a column of date/time texts, decided from the whole column (never cell by
    cell: a per-cell guess reads 01/02/2015 as January 2nd in one row and 13/02/2015 as February
    13th in the next). ``fmt``: a strftime format, "ISO8601", or None when none was recognised."""

    fmt: str | None
    example: str

    def describe(self) -> str:
        """The format as a reader would write it: DD/MM/YYYY, ISO 8601 (YYYY-MM-DD ...)."""
        if self.fmt == "ISO8601":
            return "ISO 8601 (YYYY-MM-DD or YYYY-MM-DD hh:mm:ss)"
        text = self.fmt or "?"
        for code, word in _FORMAT_WORDS:
            text = text.replace(code, word)
        return text


def _first_matching_format(value: str) -> str | None:
    """A format of _MORE_FORMATS that reads ``value`` exactly, or None."""
    from datetime import datetime

    for fmt in _MORE_FORMATS:
        try:
            datetime.strptime(value, fmt)
        except ValueError:
            continue
        return fmt
    return None


def time_format(texts) -> tuple[TimeFormat, str | None]:
    """The format of a column of stripped, non-empty date/time texts (a pandas Series of str), and a
    problem with the whole column or None.

    ISO dates (YYYY-MM-DD, with or without a time and zone) are read as ISO 8601. A/B/YYYY dates
    (separator / . or -) are day-first when some A is above 12, month-first when some B is; when
    every A and B is 12 or less the order cannot be told and the column is refused (guessing
    month-first silently turned monthly dd/mm/yyyy files into consecutive days). Anything else takes
    the format pandas infers from the first value.
    """
    from pandas.tseries.api import guess_datetime_format

    first = str(texts.iloc[0])
    if _ISO_DATE.match(first):
        return TimeFormat("ISO8601", first), None
    m = _AB_DATE.match(first)
    if m is None:
        return TimeFormat(guess_datetime_format(first) or _first_matching_format(first), first), None
    parts = texts.str.extract(_AB_DATE.pattern)
    a = parts[0].astype(float).to_numpy()
    b = parts[2].astype(float).to_numpy()
    day_a = np.flatnonzero(a > 12)   # NaN (a row in another layout) compares False
    day_b = np.flatnonzero(b > 12)
    if not day_a.size and not day_b.size:
        # Show a date whose two readings differ (01/02/2015), not one that reads the same (01/01/2015).
        differ = np.flatnonzero(a != b)
        shown = str(texts.iloc[int(differ[0])]) if differ.size else first
        x, y = _AB_DATE.match(shown).group(1, 3)  # type: ignore[union-attr]
        first = shown
        return TimeFormat(None, first), (
            f"the day/month order of the dates is ambiguous: in every date the first and second numbers "
            f"are 12 or less, so {first!r} could be day {int(x)} of month {int(y)} or day {int(y)} of month "
            f"{int(x)} (write dates as YYYY-MM-DD (ISO 8601))")
    # The order that the first telling row shows; a row showing the other order then does not fit.
    day_first = bool(day_a.size) and (not day_b.size or day_a[0] < day_b[0])
    example = str(texts.iloc[int(day_a[0] if day_first else day_b[0])])
    sep, year = m.group(2), "%Y" if len(m.group(4)) == 4 else "%y"
    date_fmt = f"%d{sep}%m{sep}{year}" if day_first else f"%m{sep}%d{sep}{year}"
    rest = first[m.end():]
    if not rest:
        return TimeFormat(date_fmt, example), None
    # The time of day's format, read from the same text behind an ISO date.
    tail = guess_datetime_format("2000-01-01" + rest)
    if tail is None or not tail.startswith("%Y-%m-%d"):
        return TimeFormat(None, first), None
    return TimeFormat(date_fmt + tail[len("%Y-%m-%d"):], example), None


def _parse_text_times(texts, ) -> tuple[object, TimeFormat | None, str | None]:
    """Stripped date/time texts (a Series of str) parsed with the column's one format:
    (datetimes in UTC, NaT where a text does not fit; the format; a problem with the column)."""
    import pandas as pd

    present = texts != ""
    if not present.any():
        return pd.to_datetime(texts.where(present), utc=True), None, None
    form, problem = time_format(texts[present])
    if problem or form.fmt is None:
        return pd.Series(pd.NaT, index=texts.index, dtype="datetime64[us, UTC]"), form, problem
    parsed = pd.to_datetime(texts.where(present), format=form.fmt, errors="coerce", utc=True)
    # One column, one kind of time: with utc=True pandas would read the naive texts among zoned
    # ones (or the other way round) as UTC, silently shifting them by the zone's offset. Texts of
    # the other kind than the column's first do not fit its format (named row by row).
    zoned = texts.str.contains(_ZONE_SUFFIX) & present
    if zoned.any() and not zoned[present].all():
        parsed = parsed.where(zoned == bool(zoned[present].iloc[0]))
    return parsed, form, None


def _parse_times(series) -> tuple[object, TimeFormat | None, str | None]:
    """A non-numeric date/time column as UTC datetimes (NaT: missing or not parsed), the format its
    texts were read with, and a problem with the whole column or None."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return pd.to_datetime(series, utc=True), None, None
    if series.dtype == object:
        is_text = np.fromiter((isinstance(v, str) for v in series), bool, len(series))
    else:  # a string dtype: every present value is text
        is_text = series.notna().to_numpy()
    others = series[~is_text & series.notna().to_numpy()]
    if not others.size:  # the usual case: texts only (or missing cells)
        keep = pd.Series(is_text, index=series.index)
        texts = series.astype(object).where(keep, "").astype(str).str.strip()
        return _parse_text_times(texts)
    # Typed values (a Parquet object column of dates) need no format; texts among them still get one.
    try:
        typed = pd.to_datetime(others, errors="coerce", utc=True).astype("datetime64[us, UTC]")
    except (ValueError, TypeError, OverflowError):
        typed = pd.Series(pd.NaT, index=others.index, dtype="datetime64[us, UTC]")
    texts = series[is_text].astype(str).str.strip()
    parsed, form, problem = _parse_text_times(texts) if texts.size else (typed.iloc[:0], None, None)
    out = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us, UTC]")
    out[typed.index] = typed
    if texts.size:
        out[parsed.index] = parsed.astype("datetime64[us, UTC]")
    return out, form, problem


def time_values(series) -> tuple[np.ndarray, np.ndarray | None, Callable[[int], str] | None, str | None]:
    """A date/time column as int64 UTC nanoseconds: (values, mask of bad cells or None, the
    message for bad cell i, a problem with the whole column or None). A bad cell is missing,
    does not fit the column's one format (see :func:`time_format`), or is outside the nanosecond
    range (a plain ``astype`` would silently wrap 9999-12-31 around to a date in 1816)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return np.empty(0, np.int64), None, None, ("numeric values in the date/time column (expected "
                                                   "dates such as 2024-01-31 or 2024-01-31 09:30:00)")
    parsed, form, problem = _parse_times(series)
    if problem:
        return np.empty(0, np.int64), None, None, problem
    missing = parsed.isna().to_numpy()
    values = parsed.dt.tz_localize(None).to_numpy()
    unit, count = np.datetime_data(values.dtype)
    per_ns = int(np.timedelta64(count, unit) // np.timedelta64(1, "ns"))
    ticks = values.view(np.int64)
    lo, hi = -(-_NS_MIN // per_ns), _NS_MAX // per_ns  # ceil, floor: in range after the scaling
    outside = ~missing & ((ticks < lo) | (ticks > hi))
    bad = missing | outside
    ns = np.where(bad, 0, ticks) * per_ns

    def explain(i: int) -> str:
        if outside[i]:
            # The same text whichever reader parsed it (and so whatever datetime64 unit it chose).
            shown = np.datetime_as_string(values[i].astype("datetime64[s]")).removesuffix("T00:00:00")
            return (f"timestamp {shown} is outside the supported range {SUPPORTED_TIME_RANGE} (times are "
                    f"stored as int64 nanoseconds)")
        value = series.iloc[i]
        if pd.isna(value) or (isinstance(value, str) and not value.strip()):
            return f"missing date/time ({_EXPECTED_TIME})"
        if form is None or form.fmt is None or not isinstance(value, str):
            return f"unparseable date/time {value!r} ({_EXPECTED_TIME})"
        if bool(re.search(_ZONE_SUFFIX, value.strip())) != bool(re.search(_ZONE_SUFFIX, form.example)):
            return (f"date/time {value!r} {'has' if re.search(_ZONE_SUFFIX, value.strip()) else 'lacks'} a "
                    f"time zone, unlike the column's first time {form.example!r} (a column mixing times "
                    f"with and without a zone cannot be put on one clock)")
        return (f"unparseable date/time {value!r} (expected the column's one format {form.describe()}, as in "
                f"{form.example!r}; best write dates as YYYY-MM-DD (ISO 8601))")

    return ns, (bad if bad.any() else None), explain, None


def time_column(df, cols: dict[str, object]) -> tuple[object, str]:
    """The series of times and its name for messages: the time column, or a Date and a Time
    column joined as ``'2024-01-31 09:30:00'`` (a missing part leaves the time missing)."""
    import pandas as pd

    if "time_of_day" not in cols:
        return df[cols["time"]], str(cols["time"])

    def text(s):
        if pd.api.types.is_datetime64_any_dtype(s):
            return s.dt.strftime("%Y-%m-%d")
        return s.astype("string").str.strip()

    joined = text(df[cols["time"]]) + " " + text(df[cols["time_of_day"]])
    return joined.astype(object), f"{cols['time']}+{cols['time_of_day']}"


def checked_times(path: Path, series, name: str) -> np.ndarray:
    """The column's times as int64 nanoseconds, or the DataError naming the first bad row."""
    values, bad, explain, problem = time_values(series)
    if problem:
        raise DataError(path, problem, column=name)
    if bad is not None:
        assert explain is not None
        i = int(np.argmax(bad))
        raise DataError(path, explain(i), row=i + 1, column=name)
    return values

"""Progress reporting: a tqdm bar on a terminal, plain periodic lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """``with Progress(total, "prepare", unit="sym") as p: p.update(1, bars=...)``.

    On a terminal it draws a tqdm bar; otherwise it prints one line at most every ``every`` seconds
    and a final line, so log files stay readable.
    """

    def __init__(self, total: int, desc: str, *, unit: str = "it", stream: TextIO | None = None,
                 every: float = 5.0, enabled: bool = True, initial: int = 0) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.every = every
        self.enabled = enabled
        self.n = initial
        self._initial = initial
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._last_line = self._start
        self._bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=True,
                             dynamic_ncols=True, initial=initial)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` and set the shown key=value figures."""
        self.n += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(self.postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.every:
            self._last_line = now
            self._print_line()

    def _print_line(self, final: bool = False) -> None:
        rate = (self.n - self._initial) / self.elapsed if self.elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 and self.total else 0.0
        extras = " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        tail = f"{self.elapsed:.1f}s" if final else f"eta {eta:.0f}s"
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s, {tail}) {extras}"
              .rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar (or print the last line)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.n or self.total:
            self._print_line(final=True)
        self.enabled = False


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

"""The built-in synthetic market: deterministic symbols with volatility clustering, regimes, a
shared market factor and a weak predictable component, generated in blocks of symbols (the
per-bar cost is per block, not per symbol) and bit-identical to a per-bar reference.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .ohlcv import OHLCV

SYNTHETIC_VERSION = 1

def _market_factor(seed: int, bars: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 999_983])
    return rng.standard_normal(bars)


# The recursion below is sequential in time but independent across symbols, and each symbol draws
# only from its own generator (default_rng([seed, index])). So a block of neighbouring symbols is
# generated together, one loop over bars on vectors of symbols, and every symbol's values are the
# same whichever block (or none) it is generated in. Every operation is the element-wise IEEE one
# the per-symbol loop of version 1 did, in the same order (its scalar ``** 2`` is libm's pow: see
# _pow2), so the output is bit-identical to it and SYNTHETIC_VERSION stays 1.
_FIRST_BLOCK = 16           # symbols 0-15 form the first block (the default market has 16)
_BLOCK_SYMBOLS = 256        # at most this many symbols per block: per-bar cost is per block, not per symbol
_BLOCK_ELEMENTS = 1 << 21   # at most this many symbol-bars per block array (16 MiB), so memory is bounded
_BLOCKS_KEPT = 3            # generated blocks kept for the symbols still to be asked for (prepare's threads)
_POW_TOLERANCE = 1 / 32     # ULPs: how close to a rounding tie libm's pow(x, 2) may differ from x * x


@dataclass(frozen=True)
class _Block:
    """The per-bar recursion of the symbols ``first .. first + width - 1`` of one market."""

    first: int
    returns: np.ndarray          # (bars, width): the daily log returns, one column per symbol
    base_vol: tuple[float, ...]  # each symbol's base volatility
    states: tuple[dict, ...]     # each symbol's generator state after the recursion's draws


class _Slot:
    """One memo entry: generated once, by the first thread that asks (the others wait for it),
    and dropped once each of its symbols has been taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.block: _Block | None = None
        self.taken: set[int] = set()


_memo: OrderedDict[tuple[int, int, int, int], _Slot] = OrderedDict()
_memo_lock = threading.Lock()


def _forget_blocks() -> None:
    # A child forked while another thread held a lock would wait on it forever: start afresh.
    global _memo, _memo_lock
    _memo, _memo_lock = OrderedDict(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_blocks)


def _block_span(index: int, bars: int) -> tuple[int, int]:
    """(first, width) of the block holding symbol ``index``: symbols 0-15 together, then blocks
    that double (16-31, 32-63, ...) up to _BLOCK_SYMBOLS, so a small market computes no symbols
    it does not have and a large one few blocks; narrower for long series (memory)."""
    cap = max(1, min(_BLOCK_SYMBOLS, _BLOCK_ELEMENTS // max(1, bars)))
    widest = 1 << (cap.bit_length() - 1)  # a power of two: the blocks stay aligned
    width = min(widest, max(_FIRST_BLOCK, 1 << (max(index, 1).bit_length() - 1)))
    return index - index % width, width


def _block(seed: int, bars: int, index: int) -> _Block:
    """The block holding symbol ``index``, from a small thread-safe memo, so that each block's
    recursion runs once while prepare's threads take its symbols one by one. A block is dropped
    when all its symbols have been taken, or when it is the least recently used of more than
    _BLOCKS_KEPT (a symbol asked for again is then simply generated again)."""
    first, width = _block_span(index, bars)
    key = (seed, bars, first, width)
    with _memo_lock:
        slot = _memo.get(key)
        if slot is None:
            slot = _memo[key] = _Slot()
        _memo.move_to_end(key)
        while len(_memo) > _BLOCKS_KEPT:
            _memo.popitem(last=False)
    with slot.lock:
        if slot.block is None:
            slot.block = _generate_block(seed, bars, first, width)
        block = slot.block
    with _memo_lock:
        slot.taken.add(index)
        if len(slot.taken) == width and _memo.get(key) is slot:
            del _memo[key]
    return block


def _generate_block(seed: int, bars: int, first: int, width: int) -> _Block:
    """Run the GARCH / regime recursion of the ``width`` symbols from ``first`` together."""
    z = np.empty((bars, width))
    u = np.empty((bars, width))
    half_beta, idio, var, omega, base_vols, states = [], [], [], [], [], []
    for k in range(width):
        # The same draws in the same order as one symbol on its own; Python float arithmetic for
        # the per-symbol constants, exactly as before (``**`` is libm's pow, not a product).
        rng = np.random.default_rng([seed, first + k])
        beta = 0.4 + 0.6 * rng.random()
        base_vol = 0.008 + 0.012 * rng.random()
        z[:, k] = rng.standard_normal(bars)
        u[:, k] = rng.random(bars)
        states.append(rng.bit_generator.state)
        half_beta.append(beta * 0.5)
        idio.append(math.sqrt(1 - (beta * 0.5) ** 2))
        var.append(base_vol**2)
        omega.append(base_vol**2 * 0.05)
        base_vols.append(base_vol)
    volatile = _regimes(u)
    del u
    _regime_free_shocks(z, _market_factor(seed, bars), np.asarray(half_beta), np.asarray(idio))
    returns = _recursion(z, volatile, np.asarray(var), np.asarray(omega))
    return _Block(first, returns, tuple(base_vols), tuple(states))


def _regimes(u: np.ndarray) -> np.ndarray:
    """The two-state Markov regime of every (bar, symbol): True in the volatile one."""
    volatile = np.empty(u.shape, dtype=bool)
    regime = np.zeros(u.shape[1], dtype=bool)
    for t in range(len(u)):
        regime = regime ^ (u[t] > np.where(regime, 0.98, 0.995))  # leave the state with 1 - p_stay
        volatile[t] = regime
    return volatile


def _regime_free_shocks(eps: np.ndarray, market: np.ndarray, half_beta: np.ndarray,
                        idio: np.ndarray) -> None:
    """In place, ``eps`` (bars, symbols) -> beta / 2 * market + sqrt(1 - (beta / 2)**2) * eps:
    it does not depend on the recursion, so all bars at once (in chunks: a bounded temporary)."""
    eps *= idio
    for start in range(0, len(eps), 1024):
        eps[start:start + 1024] += np.multiply.outer(market[start:start + 1024], half_beta)


def _recursion(z: np.ndarray, volatile: np.ndarray, var: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """GARCH(1,1) variance and the predictable part (mean reversion of the last return, slow
    momentum), bar by bar on vectors of symbols; returns the (bars, symbols) returns."""
    alpha, garch_beta = 0.08, 0.87
    returns = np.empty(z.shape)
    prev_r = mom = np.zeros(z.shape[1])
    for t in range(len(z)):
        volmult = np.where(volatile[t], 1.6, 0.8)
        sigma = np.sqrt(var) * volmult
        # Predictable part, small against sigma: mean reversion of the last return, slow momentum.
        mu = np.where(volatile[t], -0.0003, 0.0004) - 0.12 * prev_r + 0.05 * mom
        shock = sigma * z[t]
        r = returns[t]
        np.add(mu, shock, out=r)
        # GARCH on the regime-free shock, so the volatile regime cannot make the process explode.
        var = omega + alpha * _pow2(shock / volmult) + garch_beta * var
        mom = 0.95 * mom + 0.05 * r
        prev_r = r
    return returns


def _pow2(x: np.ndarray) -> np.ndarray:
    """``x ** 2`` element-wise exactly as a NumPy float64 scalar computes it: libm's pow.

    pow(x, 2) equals x * x (correctly rounded) except, at times, when the exact square lies within
    a small fraction of a ULP of a rounding tie: glibc's pow is within 0.54 ULP, i.e. at most
    0.04 ULP beyond the rounding, and for squares between 1e-200 and 1e200 within 0.027 ULP (its
    log's error grows with |log x|); about 1 in 1200 random values differ. The exact square is
    p + err (Dekker's product); values within _POW_TOLERANCE ULP of a tie, and those outside that
    range, NaN or infinite, take the scalar ``**`` itself (about 6% of them)."""
    p = x * x
    c = 134217729.0 * x  # 2**27 + 1: splits x into halves whose products are exact
    hi = c - (c - x)
    lo = x - hi
    err = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
    margin = _POW_TOLERANCE * np.spacing(p)
    # p + err rounds to p; moved by the margin either way it rounds to something else only when a
    # tie lies within the margin (a NaN compares unequal, so it is caught as well).
    near_tie = (p + (err + margin) != p + (err - margin)) | ~((p > 1e-200) & (p < 1e200))
    for i in np.nonzero(near_tie)[0]:
        p[i] = x[i] ** 2
    return p


@functools.lru_cache(maxsize=8)
def _business_days(bars: int) -> np.ndarray:
    start = np.datetime64("2000-01-03", "D")
    days = np.busday_offset(start, np.arange(bars), roll="forward")
    time = days.astype("datetime64[ns]").astype(np.int64)
    time.flags.writeable = False  # shared by every symbol of this length: each gets a copy
    return time


def synthetic_symbol(version: int, seed: int, index: int, bars: int) -> OHLCV:
    """One symbol of the synthetic market, deterministic for (seed, index, bars).

    Returns follow a GARCH(1,1) volatility process (clustering) with a two-state Markov regime
    (calm/trending vs volatile), a shared market factor, and a weak predictable component (short-term
    mean reversion plus slow momentum) that indicators can pick up. Volume grows with |return|.
    """
    if version != SYNTHETIC_VERSION:
        raise UserError(f"synthetic market version {version} is not supported by this code "
                        f"(expected {SYNTHETIC_VERSION})")
    block = _block(seed, bars, index)
    k = index - block.first
    # The rest draws from this symbol's own generator, continuing where the recursion's draws ended.
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = block.states[k]
    r = block.returns[:, k].copy()  # contiguous, like the per-symbol array it replaces
    base_vol = block.base_vol[k]
    close = 50.0 * (1 + rng.random()) * np.exp(np.cumsum(r))
    gap = rng.standard_normal(bars) * 0.15 * np.abs(r)
    open_ = np.empty(bars)
    open_[0] = close[0] * math.exp(-r[0])
    open_[1:] = close[:-1] * np.exp(gap[1:])
    hi_ext = np.abs(rng.standard_normal(bars)) * 0.5 * np.abs(r) + 0.002 * rng.random(bars)
    lo_ext = np.abs(rng.standard_normal(bars)) * 0.5 * np.abs(r) + 0.002 * rng.random(bars)
    high = np.maximum(open_, close) * np.exp(hi_ext)
    low = np.minimum(open_, close) * np.exp(-lo_ext)
    vol_scale = np.abs(r) / base_vol
    volume = np.round(1e5 * (1 + rng.random()) * np.exp(0.3 * rng.standard_normal(bars))
                      * (0.6 + 0.8 * vol_scale))
    return OHLCV(f"SYN{index:03d}", _business_days(bars).copy(), open_, high, low, close, volume)

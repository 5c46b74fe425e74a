"""Training-speed options side by side: every candidate as a ratio to a bare eager fp32 PyTorch loop.

    python benchmarks/bench_options.py                     # about 4 minutes on 2 idle cores
    python benchmarks/bench_options.py --quick             # fewer steps and repeats (about 1 minute)
    python benchmarks/bench_options.py --compile           # also torch.compile (adds a long warm-up)
    python benchmarks/bench_options.py --json out.json     # the rows as JSON too (for run_all.py)

One process, one prepared synthetic market, one model configuration (the defaults: 32 wide, 1
layer, window 32, 25 features), one batch size. Each candidate is a training loop with its own
model, optimizer and endless stream of training batches; a *repeat* times ``--steps`` optimizer
steps of every candidate in turn (the order rotates from repeat to repeat), after one warm-up
round. The figure of a candidate in a repeat is its samples/s divided by the reference's in the
same repeat (a paired ratio: both saw about the same background load), and the table gives the
min / median / max of those ratios and of the samples/s. The reference, ``bare fp32``, is what a
user would write: ``for x, y in DataLoader(WindowDataset, batch_size, shuffle=True)``: forward,
MSE, zero_grad, backward, clip, AdamW step, with torch's default thread count.

Candidates:
    bare fp32            the reference
    bare bf16            the same under ``torch.autocast("cpu", torch.bfloat16)``
    bare fused AdamW     ``AdamW(fused=True)``: one kernel for the whole update
    bare 1 thread        ``torch.set_num_threads(1)`` while it runs (the reference uses the default)
    bare vector gather   batches built by one vectorised gather instead of the dataset's per-sample
                         loop (checked to give the same tensors bit for bit; printed)
    bare batch x4        4x the batch size and 2x the learning rate (samples/s; changes training)
    ours fp32 / ours bf16  the project's ``Trainer._train_epoch`` with ``--precision fp32`` / ``bf16``
    bare compiled        ``torch.compile(model)`` (only with ``--compile``)

JSON (``--json PATH``)::

    {"benchmark": "training options",
     "machine": {"cpu": str, "cores": int, "torch": str, "cpu_capability": str, "threads": int,
                 "bf16_native": bool, "load_average": [float, float, float]},
     "settings": {"symbols": int, "bars": int, "batch_size": int, "steps": int, "repeats": int,
                  "command": str},
     "reference": "bare fp32",
     "rows": [{"name": str, "description": str, "samples_per_s": {"min": f, "median": f, "max": f},
               "ratio": {"min": f, "median": f, "max": f},   # paired, to the reference
               "same_results": "bit-identical" | "same meaning" | "different training"}, ...],
     "notes": [str, ...]}
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import common
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from indicator_transformer.config import Config
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.prepare import prepare, resolve_sources
from indicator_transformer.data.windows import WindowDataset, collate_batch, fit_normalisation, make_splits
from indicator_transformer.model import IndicatorTransformer
from indicator_transformer.shutdown import SignalHandler
from indicator_transformer.training.trainer import Trainer

REFERENCE = "bare fp32"


# --------------------------------------------------------------------------- the data
@dataclass
class Data:
    cfg: Config
    prepared: object
    splits: dict
    norm: object
    train: WindowDataset


def build_data(work: Path, args: argparse.Namespace) -> Data:
    """The synthetic market prepared into ``work/cache`` and its training split."""
    cfg = Config().replace(symbols=args.symbols, bars=args.bars, batch_size=args.batch_size, device="cpu",
                           num_workers=0, cache_dir=str(work / "cache"), models_dir=str(work / "models"))
    cache = FeatureCache(cfg.data.cache_dir).open()
    data = prepare(resolve_sources(cfg.data), cfg.features, cache, handler=SignalHandler(),
                   workers=cfg.data.prep_workers, stream=io.StringIO(), show_progress=False)
    splits = make_splits(data.symbols, cfg.features)
    norm = fit_normalisation(data.symbols, splits["train"], cfg.features.window)
    train = WindowDataset(data.symbols, splits["train"], cfg.features.window, norm)
    return Data(cfg, data, splits, norm, train)


def vector_gather(ds: WindowDataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``ds.__getitems__(indices)`` with the per-sample Python loop replaced by array operations:
    one searchsorted for all symbols, then one gather per symbol present in the batch."""
    idx = np.asarray(indices, np.int64)
    sym = np.searchsorted(ds._offsets, idx, side="right") - 1
    end = ds._starts[sym] + (idx - ds._offsets[sym])
    xs = np.empty((len(idx), ds.window, ds.mean.shape[1]), np.float32)
    ys = np.empty(len(idx), np.float32)
    rows = np.arange(-ds.window + 1, 1)
    for s in np.unique(sym):
        here = np.flatnonzero(sym == s)
        feats, label = ds.symbols[s].features, ds.symbols[s].label
        xs[here] = feats[end[here, None] + rows]
        ys[here] = label[end[here]]
    xs -= ds.mean[sym][:, None, :]
    xs *= ds.inv_std[sym][:, None, :]
    np.clip(xs, -ds.CLIP, ds.CLIP, out=xs)
    ys -= ds.label_mean[sym]
    ys *= ds.label_inv_std[sym]
    return torch.from_numpy(xs), torch.from_numpy(ys)


class _VectorDataset(torch.utils.data.Dataset):
    def __init__(self, ds: WindowDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return vector_gather(self.ds, indices)


def gathers_agree(ds: WindowDataset, n: int = 2048) -> bool:
    """Whether the vectorised gather gives the dataset's own batches bit for bit."""
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))[:n].tolist()
    (a, b), (c, d) = ds.__getitems__(order), vector_gather(ds, order)
    return torch.equal(a, c) and torch.equal(b, d)


# --------------------------------------------------------------------------- the candidates
def endless(loader_factory: Callable[[], DataLoader]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of epoch after epoch (a new DataLoader iterator per epoch, as a real loop has)."""
    while True:
        yield from loader_factory()


@dataclass
class Candidate:
    name: str
    description: str
    same_results: str
    run: Callable[[int], tuple[int, float]]   # steps -> (samples, seconds)
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def bare_candidate(name: str, description: str, same: str, data: Data, *, bf16: bool = False,
                   fused: bool = False, threads: int | None = None, vector: bool = False,
                   batch_mult: int = 1, compiled: bool = False) -> Candidate:
    """A bare PyTorch loop with one option changed."""
    cfg = data.cfg
    torch.manual_seed(cfg.train.seed)
    model = IndicatorTransformer(len(data.prepared.feature_names), cfg.features.window, cfg.model)
    lr = cfg.train.lr * (batch_mult ** 0.5)  # square-root scaling for a larger batch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.train.weight_decay,
                            **({"fused": True} if fused else {}))
    forward = torch.compile(model) if compiled else model
    dataset = _VectorDataset(data.train) if vector else data.train
    gen = torch.Generator().manual_seed(cfg.train.seed)
    batches = endless(lambda: DataLoader(dataset, batch_size=cfg.train.batch_size * batch_mult, shuffle=True,
                                         num_workers=0, collate_fn=collate_batch, generator=gen))
    loss_fn = nn.MSELoss()

    def run(steps: int) -> tuple[int, float]:
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        model.train()
        samples, t0 = 0, time.perf_counter()
        try:
            for _ in range(steps):
                x, y = next(batches)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    pred = forward(x)
                loss = loss_fn(pred.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                opt.step()
                samples += len(y)
            return samples, time.perf_counter() - t0
        finally:
            torch.set_num_threads(before)

    return Candidate(name, description, same, run)


def ours_candidate(name: str, data: Data, precision: str, threads: int = 0) -> Candidate:
    """The project's trainer (``--precision``, ``--threads``), timing ``_train_epoch`` over the last
    ``steps`` batches of an epoch."""
    cfg = data.cfg.replace(precision=precision, threads=threads)
    default_threads = torch.get_num_threads()
    trainer = Trainer(cfg, data.prepared, data.splits, data.norm, handler=SignalHandler(),
                      stream=io.StringIO(), show_progress=False)
    torch.set_num_threads(default_threads)  # the trainer set its own: only while it runs here

    def run(steps: int) -> tuple[int, float]:
        if threads:
            torch.set_num_threads(threads)
        trainer.step_in_epoch = max(trainer.steps_per_epoch - steps, 0)
        first = trainer.step_in_epoch
        t0 = time.perf_counter()
        try:
            trainer._train_epoch()
        finally:
            torch.set_num_threads(default_threads)
        seconds = time.perf_counter() - t0
        trainer.epoch += 1  # the next epoch's permutation, as a real run draws
        return sum(trainer.sampler.global_size(b) for b in range(first, trainer.steps_per_epoch)), seconds

    flags = f"--precision {precision}" + (f" --threads {threads}" if threads else "")
    same = "same meaning" if precision != "fp32" or threads else "bit-identical"
    return Candidate(name, f"Trainer._train_epoch, {flags}", same, run)


def candidates(data: Data, args: argparse.Namespace) -> list[Candidate]:
    """Every candidate, the reference first."""
    out = [
        bare_candidate(REFERENCE, "eager fp32, default threads, DataLoader over WindowDataset",
                       "bit-identical", data),
        bare_candidate("bare bf16", "torch.autocast(cpu, bfloat16) around the forward", "same meaning",
                       data, bf16=True),
        bare_candidate("bare fused AdamW", "AdamW(fused=True)", "same meaning", data, fused=True),
        bare_candidate("bare 1 thread", "torch.set_num_threads(1)", "same meaning", data, threads=1),
        bare_candidate("bare vector gather", "batches by one vectorised gather (bit-identical)",
                       "bit-identical", data, vector=True),
        bare_candidate("bare batch x4", f"batch {4 * args.batch_size}, lr x2 (sqrt scaling)",
                       "different training", data, batch_mult=4),
        ours_candidate("ours fp32", data, "fp32"),
        ours_candidate("ours bf16", data, "bf16"),
        ours_candidate("ours 1 thread", data, "fp32", threads=1),
    ]
    if args.compile:
        out.append(bare_candidate("bare compiled", "torch.compile(model), default mode", "same meaning",
                                  data, compiled=True))
    return out


# --------------------------------------------------------------------------- measuring
def measure(cands: list[Candidate], args: argparse.Namespace) -> None:
    """One warm-up round, then ``repeats`` rounds in a rotating order; paired ratios per round."""
    for c in cands:
        c.run(max(2, args.steps // 4))
    for r in range(args.repeats):
        k = r % len(cands)
        rates = {}
        for c in cands[k:] + cands[:k]:
            samples, seconds = c.run(args.steps)
            rates[c.name] = samples / seconds
        for c in cands:
            c.rates.append(rates[c.name])
            c.ratios.append(rates[c.name] / rates[REFERENCE])
        figures = ", ".join(f"{c.name} {rates[c.name]:,.0f}" for c in cands)
        print(f"  repeat {r + 1}/{args.repeats}: {figures}  (load {load_average()})", flush=True)


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def bf16_native() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def print_table(cands: list[Candidate]) -> None:
    head = (f"{'option':<20} {'samples/s min / median / max':>30}   "
            f"{'ratio to bare fp32 min / median / max':>38}  results")
    print(head)
    print("-" * len(head))
    for c in cands:
        r, q = spread(c.rates), spread(c.ratios)
        print(f"{c.name:<20} {r['min']:>9,.0f} / {r['median']:>7,.0f} / {r['max']:>7,.0f}   "
              f"{q['min']:>17.3f}x / {q['median']:.3f}x / {q['max']:.3f}x  {c.same_results}")


def report(cands: list[Candidate], args: argparse.Namespace, notes: list[str]) -> dict:
    """The JSON document (shape in the module docstring)."""
    return {
        "benchmark": "training options",
        "machine": {"cpu": common.cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "threads": torch.get_num_threads(), "bf16_native": bf16_native(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "settings": {"symbols": args.symbols, "bars": args.bars, "batch_size": args.batch_size,
                     "steps": args.steps, "repeats": args.repeats,
                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])},
        "reference": REFERENCE,
        "rows": [{"name": c.name, "description": c.description, "samples_per_s": spread(c.rates),
                  "ratio": spread(c.ratios), "same_results": c.same_results} for c in cands],
        "notes": notes,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=16)
    p.add_argument("--bars", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per candidate per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="--steps 8 --repeats 3")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow warm-up)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 8, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"cpu: {common.cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, native bf16: "
          f"{'yes' if bf16_native() else 'no'}; load {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_options_") as tmp:
        data = build_data(Path(tmp), args)
        same = gathers_agree(data.train)
        notes = ["vectorised gather equals WindowDataset.__getitems__ bit for bit: "
                 + ("yes" if same else "NO")]
        if not bf16_native():
            notes.append("this CPU has no native bfloat16 (no avx512_bf16/amx_bf16): bf16 is emulated")
        print(f"{len(data.train):,} training windows, batch {args.batch_size}, {args.steps} steps x "
              f"{args.repeats} repeats per candidate", flush=True)
        cands = candidates(data, args)
        measure(cands, args)
    print()
    print_table(cands)
    for n in notes:
        print(f"note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps(report(cands, args, notes), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

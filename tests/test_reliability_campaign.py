"""The fast, deterministic subset of the fault-injection campaign (tests/reliability/README.md):
eight trials, one of every kind, from a fixed seed, run as the campaign command itself. The full
campaign (hundreds of trials) is opt-in: ``python tests/reliability/campaign.py --trials 300``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, child_env, default_sigint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability.campaign import KINDS, plan  # noqa: E402

# A seed whose first eight trials are one of each kind, on as few configurations as possible (so
# few reference runs): every single-process trial uses the periodic-checkpoint configuration.
FAST_SEED = 113
FAST_TRIALS = len(KINDS)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run the fast subset once; kind -> its trial's report line (and details when it failed)."""
    work = tmp_path_factory.mktemp("campaign")
    r = subprocess.run([sys.executable, "tests/reliability/campaign.py", "--trials", str(FAST_TRIALS),
                        "--seed", str(FAST_SEED), "--jobs", "2", "--workdir", str(work)],
                       cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=900,
                       preexec_fn=default_sigint)
    lines: dict[str, str] = {}
    current = None
    for line in r.stdout.splitlines():
        m = re.match(r"\[\d+/\d+\] (\w+) seed=", line)
        if m:
            current = m.group(1)
            lines[current] = line
        elif current and line.startswith("    "):
            lines[current] += "\n" + line
    lines["_summary"] = r.stdout.splitlines()[-1] if r.stdout else r.stderr[-2000:]
    return lines


def test_the_fast_subset_covers_every_kind_once() -> None:
    assert sorted(kind for kind, _ in plan(FAST_TRIALS, FAST_SEED, None)) == sorted(KINDS)


def test_the_campaign_ends_with_its_summary_line(campaign: dict[str, str]) -> None:
    assert re.fullmatch(rf"{FAST_TRIALS} trials, \d+ failures", campaign["_summary"]), campaign["_summary"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_invariant_holds_after_a_random_fault_of_each_kind(campaign: dict[str, str], kind: str) -> None:
    line = campaign.get(kind, f"no {kind} trial ran: {campaign['_summary']}")
    assert "-> PASS" in line.splitlines()[0], line

"""Paired A/B of two checkouts of this server: C-STORE, C-GET and C-MOVE, both servers up at once.

Run: `python bench/ab.py TREE_A TREE_B [--rounds 10] [--workloads store,get,move] [--env-b NAME=VALUE ...]`, e.g.
`git worktree add /tmp/before HEAD~1 && python bench/ab.py /tmp/before .`.

This machine's speed drifts by a fifth or more within minutes (bench/README.md), more than most changes are
worth, so runs of one server after the other compare spells of the machine as much as code. Here both servers
run side by side from the start (each from its own checkout, `python -m app serve` with its own data
directory), and the work alternates between them in short bursts, A then B, then B then A: each burst of B is
compared with the burst of A next to it, and the median of those ratios is the answer.

- store: `--burst` fresh CT_small copies (bench/common.py) per burst, over one storescu association and over
  four, TCP_NODELAY=1.
- get, move: both servers are given the same 500 instances in 20 studies; a burst retrieves every study once
  (getscu, or movescu to one DCMTK storescp registered on both), one association at a time and four.

Prints per workload each side's median rate and server CPU per instance (`/proc`, the process group), and the
paired ratio B/A (median, min-max). `--env-b` sets environment variables of B only (a setting against its
default, on one tree). Nothing is recorded under bench/results/: the figures belong in the note that asks.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ct_copies, free_port, our_server, process_group_cpu
from bench.cstore import AE_TITLE, send
from bench.retrieve import DESTINATION, get_study, move_study, rate, storescp, study_sizes

Sample = tuple[float, float]  # instances/s, server CPU ms per instance


def measure(pid: int, instances: int, work: Callable[..., float], *args: object) -> Sample:
    """Run `work(*args)` (returning instances/s) and the server's CPU over it."""
    before = process_group_cpu(pid)
    speed = work(*args)
    return speed, (process_group_cpu(pid) - before) / instances * 1000


def store_rate(port: int, files: list[Path], associations: int) -> float:
    return len(files) / send(port, files, associations)


def retrieve_rate(port: int, kind: str, studies: dict[str, int], associations: int) -> float:
    retrieve = get_study if kind == "get" else move_study
    return rate(studies, functools.partial(retrieve, port, AE_TITLE), associations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--burst", type=int, default=100, help="instances per C-STORE burst")
    parser.add_argument("--workloads", default="store,get,move")
    parser.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    kinds = args.workloads.split(",")
    env_b = dict(item.split("=", 1) for item in args.env_b)
    sides = {"A": (args.tree_a.resolve(), {}), "B": (args.tree_b.resolve(), env_b)}
    samples: dict[tuple[str, str, int], list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as work, ExitStack() as stack:
        root = Path(work)
        destination = free_port()
        stack.enter_context(storescp(destination))
        servers = {
            side: stack.enter_context(
                our_server(
                    root / side,
                    dimse=True,
                    tree=tree,
                    env={"AE_TITLE": AE_TITLE, "DIMSE_REMOTE_AES": f"{DESTINATION}@127.0.0.1:{destination}", **env},
                )
            )
            for side, (tree, env) in sides.items()
        }
        stored = ct_copies(root / "retrieved", 500, studies=20)
        studies = study_sizes(stored)
        fresh = iter(ct_copies(root / "stored", 2 * 2 * args.rounds * args.burst) if "store" in kinds else [])
        for ports in servers.values():
            if "get" in kinds or "move" in kinds:
                send(ports["dimse"], stored, 4)
        for turn in range(args.rounds):
            order = ["A", "B"] if turn % 2 == 0 else ["B", "A"]
            for kind in kinds:
                for associations in (1, 4):
                    for side in order:
                        ports = servers[side]
                        if kind == "store":
                            files = [next(fresh) for _ in range(args.burst)]
                            sample = measure(ports["pid"], len(files), store_rate, ports["dimse"], files, associations)
                        else:
                            sample = measure(
                                ports["pid"], len(stored), retrieve_rate, ports["dimse"], kind, studies, associations
                            )
                        samples.setdefault((kind, side, associations), []).append(sample)
    print(f"A = {sides['A'][0]}  B = {sides['B'][0]} {env_b or ''}; {args.rounds} rounds")
    for kind in kinds:
        for associations in (1, 4):
            a, b = samples[(kind, "A", associations)], samples[(kind, "B", associations)]
            ratios = [after[0] / before[0] for before, after in zip(a, b, strict=True)]
            print(
                f"{kind} x{associations}: A {statistics.median(s[0] for s in a):.0f}/s "
                f"({statistics.median(s[1] for s in a):.2f} ms CPU per instance), "
                f"B {statistics.median(s[0] for s in b):.0f}/s ({statistics.median(s[1] for s in b):.2f} ms); "
                f"B/A paired median {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Runs of bench/results.json side by side, as a Markdown table.

    bench/compare.py [RUN...]

RUN is a run's number in the history (1 is the oldest, -1 the newest);
without one, the last two full runs (every benchmark, 3 rounds or more)
are compared. Each run's columns are named by its number and show the
figure's median ratio with its spread, and whether the target was met. A
figure one run has and another lacks shows "—".
"""

import json
import os
import sys

from report import HERE, fmt, fmt_ratio


def pick(runs, argv):
    if argv:
        return [(int(a) if int(a) < 0 else int(a) - 1) for a in argv]
    # A full run: every benchmark, each alternated with its peer 3+ times.
    full = [i for i, r in enumerate(runs) if len(r.get("benchmarks", [])) >= 9 and r.get("rounds", 0) >= 3]
    return full[-2:] if len(full) >= 2 else list(range(len(runs)))[-2:]


def main(argv):
    with open(os.path.join(HERE, "results.json")) as fh:
        runs = json.load(fh)["runs"]
    idx = [i % len(runs) for i in pick(runs, argv)]
    chosen = [runs[i] for i in idx]
    # Columns are named by the run's number in the history, as RUN is given.
    numbers = [i + 1 for i in idx]
    for n, run in zip(numbers, chosen):
        m = run.get("machine", {})
        print(f"- run {n}: commit {run['commit']}, {run['finished_at']}, host {m.get('host', '?')}, "
              f"{m.get('cores', '?')} cores, {m.get('cpu', '?')}, boot {m.get('boot_id', '?')[:8]}, {run['rounds']} rounds")
    print()
    head = ["bench", "figure", "against", "target"]
    for n in numbers:
        head += [f"run {n}: Mage", f"run {n}: ratio", f"run {n}: spread", f"run {n}: met"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    order = []
    for run in chosen:
        for f in run["figures"]:
            key = (f["bench"], f["figure"])
            if key not in order:
                order.append(key)
    for key in order:
        found = [next((f for f in run["figures"] if (f["bench"], f["figure"]) == key), None) for run in chosen]
        first = next(f for f in found if f)
        row = [key[0], key[1], first.get("against") or "", first.get("target") or ""]
        for f in found:
            if f is None:
                row += ["—"] * 4
                continue
            unit = f.get("unit", "")
            mine = fmt(f["mage"]["median"], " " + unit if unit else "") if f.get("mage") else "—"
            r, s = fmt_ratio(f.get("ratio"))
            met = f.get("met")
            row += [mine, r, s, "—" if met is None else ("yes" if met else "**no**")]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])

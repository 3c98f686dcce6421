#!/usr/bin/env python3
"""Turns the rounds of one `bench/run` into one table and one entry of
bench/results.json.

Each round ran every selected benchmark once, and each benchmark measures
Mage and its peer (or ceiling, or floor) back to back, so over the rounds
the two alternate. A figure's ratio is taken per round, against the peer
of that same round; the table shows the median over the rounds with the
spread (min-max), and a target counts as met only when the median meets it.

    report.py DIR NAME...   DIR holds NAME.ROUND.json (ROUND = 1, 2, ...)

bench/results.json keeps every run: {"runs": [...]}, newest last.
"""

import datetime
import json
import os
import platform
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ["queue", "holds", "queries", "subscriptions", "transcode", "upload", "webhooks", "deliver", "web"]


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


# A figure: Mage's value, what it is compared with, and the target. `better`
# says which way Mage's value is better ("higher": throughput, "lower": time),
# `goal` is the target on the ratio (ratio >= goal for "higher", ratio <= goal
# for "lower"), `absolute` a target on Mage's own value (same direction).
class Figure:
    def __init__(self, bench, name, unit, mine, peer_name="", peer=None, target="(no target)",
                 better="higher", goal=None, absolute=None):
        self.bench, self.name, self.unit = bench, name, unit
        self.mine, self.peer_name, self.peer = mine, peer_name, peer
        self.target, self.better, self.goal, self.absolute = target, better, goal, absolute

    @property
    def key(self):
        return (self.bench, self.name)


def figures(results):
    """Every figure of one round, from the benchmarks' own JSON."""
    out = []
    f = lambda *a, **k: out.append(Figure(*a, **k))

    q = results.get("queue")
    if q is not None:
        # The floor: one Redis round trip made as a push is made, alone after
        # the same idle time; a PING in a tight loop is far cheaper and no
        # request of an idle queue sees it (shown too, with no target).
        f("queue", "enqueue→start p50", " ms", get(q, "latency_p50_ms", "mage"), "one Redis round trip",
          get(q, "redis_ping_paced_p50_ms", "mage"), "≤ 5× RTT", better="lower", goal=5)
        f("queue", "enqueue→start p50 vs looped PING", " ms", get(q, "latency_p50_ms", "mage"), "PING in a loop",
          get(q, "redis_ping_p50_ms", "mage"), "(no target)", better="lower")
        f("queue", "enqueue→start p50 vs BullMQ", " ms", get(q, "latency_p50_ms", "mage"), "BullMQ",
          get(q, "latency_p50_ms", "bullmq"), "(no target)", better="lower")
        f("queue", "enqueue→start p99 vs BullMQ", " ms", get(q, "latency_p99_ms", "mage"), "BullMQ",
          get(q, "latency_p99_ms", "bullmq"), "(no target)", better="lower")
        f("queue", "drain (bulk-enqueued jobs)", "/s", get(q, "jobs_per_s", "mage"), "BullMQ",
          get(q, "jobs_per_s", "bullmq"), "≥ 2× BullMQ", goal=2)

    h = results.get("holds")
    if h is not None:
        for who, label, ceiling in [("mage_one_user", "credit holds, 1 user", "pgbench_one_row"),
                                    ("mage_many_users", "credit holds, 1,000 users", "pgbench_many_rows")]:
            f("holds", label, "/s", get(h, "per_s", who), "pgbench, same statements", get(h, "per_s", ceiling),
              "≥ 0.5× pgbench", goal=0.5)

    qs = results.get("queries")
    if qs is not None:
        floor = get(qs, "req_per_s", "typename_mage")
        f("queries", "{ __typename } (floor)", "/s", floor)
        for op in ["me", "generations"]:
            label = "generations(first: 20)" if op == "generations" else "me { credits }"
            m, y = get(qs, "req_per_s", f"{op}_mage"), get(qs, "req_per_s", f"{op}_yoga")
            f("queries", f"{label} vs yoga", "/s", m, "graphql-yoga", y, "≥ 5× yoga", goal=5)
            f("queries", f"{label} vs floor", "/s", m, "{ __typename }", floor, "≥ 0.5× floor", goal=0.5)
        # Sessions (issue 20): the token and the in-memory session check,
        # on the cheapest query, against the same query anonymous.
        f("queries", "session check: { __typename } with a token", "/s",
          get(qs, "req_per_s", "typename_mage_with_token"), "without", floor, "≥ 0.9×", goal=0.9)

    s = results.get("subscriptions")
    if s is not None:
        f("subscriptions", "publish→client p99, 10,000 clients", " ms", get(s, "p99_ms", "mage_10k"),
          "raw Redis pub/sub", get(s, "redis_floor_p99_ms", "mage_10k"), "≤ 3× floor", better="lower", goal=3)
        f("subscriptions", "p99, 10,000 clients vs graphql-ws", " ms", get(s, "p99_ms", "mage_10k"),
          "graphql-ws", get(s, "p99_ms", "peer_10k"), "< peer", better="lower", goal=1)
        f("subscriptions", "memory per connection", " KiB", get(s, "kib_per_conn", "mage"), "graphql-ws",
          get(s, "kib_per_conn", "peer"), "≤ 32 KiB, < peer", better="lower", goal=1, absolute=32)

    t = results.get("transcode")
    if t is not None:
        f("transcode", "HLS ladder, 10 s 1080p", " s", get(t, "seconds", "single_pass"), "ffmpeg per rendition",
          get(t, "seconds", "per_rendition"), "≤ 0.6×", better="lower", goal=0.6)

    u = results.get("upload")
    if u is not None:
        mb = get(u, "put_bytes")
        f("upload", f"PUT {mb / 1e6:,.0f} MB" if mb else "PUT", " MB/s", get(u, "put_mb_per_s", "mage"),
          "same bytes to disk", get(u, "put_mb_per_s", "disk_ceiling"), "≥ 0.7×", goal=0.7)
        f("upload", "ingest: completeUpload→READY, 10 s 1080p", " s", get(u, "ingest_seconds", "mage"),
          "transcode alone", get(u, "ingest_seconds", "transcode_alone"), "≤ 1.10×", better="lower", goal=1.10)

    w = results.get("webhooks")
    if w is not None:
        f("webhooks", "Stripe intake, signed (10% dup)", "/s", get(w, "per_s", "mage"), "GET /healthz",
          get(w, "per_s", "healthz_floor"), "≥ 5,000/s", absolute=5000)
        rep = w.get("replicate", {})
        f("webhooks", "Replicate intake, signed (10% dup)", "/s", get(rep, "per_s", "mage"), "GET /healthz",
          get(rep, "per_s", "healthz_floor"), "(no target)")

    d = results.get("deliver")
    if d is not None:
        n = get(d, "events")
        f("deliver", f"webhooks out, {n:,.0f} events" if n else "webhooks out", "/s", get(d, "per_s", "mage"),
          "receiver ceiling", get(d, "per_s", "receiver_ceiling"), "≥ 0.5× ceiling", goal=0.5)

    wb = results.get("web")
    if wb is not None:
        f("web", "first load: time to interactive", " ms", get(wb, "interactive_ms", "app"),
          "one static page", get(wb, "interactive_ms", "static_page"), "(no target)", better="lower")
        f("web", "first load: bytes transferred", " B", get(wb, "transferred_bytes", "app"), "", None,
          "≤ 100,000 B", better="lower", absolute=100_000)
    return out


def median(xs):
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def spread(xs):
    xs = [x for x in xs if x is not None]
    return {"median": median(xs), "min": min(xs), "max": max(xs), "values": xs} if xs else None


def met(fig, mine, r):
    """Whether the medians meet the target (None: no target, or unmeasured)."""
    checks = []
    if fig.goal is not None:
        if r is None:
            return None
        checks.append(r >= fig.goal if fig.better == "higher" else r <= fig.goal)
    if fig.absolute is not None:
        if mine is None:
            return None
        checks.append(mine >= fig.absolute if fig.better == "higher" else mine <= fig.absolute)
    return all(checks) if checks else None


def aggregate(rounds):
    """One summary per figure over the rounds (a list of per-round results)."""
    per_round = [figures(r) for r in rounds]
    order, seen = [], {}
    for figs in per_round:
        for fig in figs:
            if fig.key not in seen:
                seen[fig.key] = fig
                order.append(fig.key)
    summary = []
    for key in order:
        proto = seen[key]
        found = [next((g for g in figs if g.key == key), None) for figs in per_round]
        found = [g for g in found if g is not None]
        mine = spread([g.mine for g in found])
        peer = spread([g.peer for g in found])
        r = spread([ratio(g.mine, g.peer) for g in found])
        summary.append({
            "bench": proto.bench, "figure": proto.name, "unit": proto.unit.strip(),
            "mage": mine, "against": proto.peer_name or None, "peer": peer, "ratio": r,
            "target": proto.target,
            "met": met(proto, mine and mine["median"], r and r["median"]),
        })
    return summary


def fmt(v, unit=""):
    if v is None:
        return "—"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def fmt_ratio(r):
    if r is None:
        return "—", "—"
    return f"{r['median']:.2f}×", f"{r['min']:.2f}–{r['max']:.2f}"


def table(summary, rounds):
    head = ("bench", "figure", "Mage (median)", "against", "its value", "ratio", f"spread ({rounds} rounds)",
            "target", "met")
    rows = []
    for s in summary:
        unit = (" " + s["unit"]) if s["unit"] and not s["unit"].startswith("/") else s["unit"]
        mine, peer = s["mage"], s["peer"]
        r, rs = fmt_ratio(s["ratio"])
        if s["ratio"] is None and mine is not None and len(mine["values"]) > 1:
            rs = f"{fmt(mine['min'])}–{fmt(mine['max'])}{unit}"
        rows.append((s["bench"], s["figure"], fmt(mine and mine["median"], unit), s["against"] or "",
                     fmt(peer and peer["median"], unit), r, rs, s["target"],
                     "—" if s["met"] is None else ("yes" if s["met"] else "NO")))
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def sh(*cmd):
    try:
        return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu = m.group(1) if m else ""
    except OSError:
        pass
    # The boot tells two VMs of one name (or a rebooted one) apart.
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return {"host": platform.node(), "cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "boot_id": boot}


def load_history(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    return data.get("runs", []) if isinstance(data, dict) else []


def main(argv):
    if len(argv) < 1:
        sys.exit(__doc__)
    run_dir, selected = argv[0], argv[1:] or PARTS
    files = os.listdir(run_dir)
    count = max([int(m.group(1)) for f in files if (m := re.match(r"^[a-z]+\.(\d+)\.json$", f))], default=0)
    rounds = []
    for i in range(1, count + 1):
        results = {}
        for name in selected:
            try:
                with open(os.path.join(run_dir, f"{name}.{i}.json")) as fh:
                    part = json.load(fh).get(name)
            except (OSError, ValueError):
                part = None
            if part is not None:
                results[name] = part
        rounds.append(results)
    summary = aggregate(rounds)
    table(summary, count)
    missing = [p for p in selected if not any(p in r for r in rounds)]
    partial = [p for p in selected if p not in missing and not all(p in r for r in rounds)]
    if missing:
        print(f"\nnot measured (failed or not run): {', '.join(missing)}")
    if partial:
        print(f"measured in some rounds only: {', '.join(partial)}")

    path = os.path.join(HERE, "results.json")
    history = load_history(path)
    commit = sh("git", "rev-parse", "--short", "HEAD")
    dirty = bool(sh("git", "status", "--porcelain", "--untracked-files=no"))
    history.append({
        "finished_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "commit": commit + ("+changes" if dirty else ""),
        "machine": machine(),
        "benchmarks": selected,
        "rounds": count,
        "figures": summary,
        "raw": rounds,
    })
    with open(path, "w") as fh:
        json.dump({"runs": history}, fh, indent=1, sort_keys=True, ensure_ascii=False)
        fh.write("\n")
    print(f"\nwrote bench/results.json (run {len(history)} of its history)")


if __name__ == "__main__":
    main(sys.argv[1:])

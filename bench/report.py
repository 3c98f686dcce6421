#!/usr/bin/env python3
"""Merges bench/<name>.json into bench/results.json and prints one table:
each of Mage's figures next to its peer or ceiling, measured in the same
run, with the issue's target and whether it was met."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ["queue", "holds", "queries", "subscriptions", "transcode", "upload", "webhooks", "deliver"]


def load(name):
    try:
        with open(os.path.join(HERE, f"{name}.json")) as f:
            return json.load(f).get(name)
    except (OSError, ValueError):
        return None


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d if isinstance(d, (int, float)) else None


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


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def main(selected):
    results = {}
    # Only what this run measured: figures of different runs are not compared.
    for name in selected or PARTS:
        part = load(name)
        if part is not None:
            results[name] = part
    # (section, figure, mage, peer label, peer value, ratio text, target text, met)
    rows = []

    def row(section, figure, mine, peer_name, peer, target, met, unit="", r=None):
        r = r if r is not None else ratio(mine, peer)
        rows.append((section, figure, fmt(mine, unit), peer_name, fmt(peer, unit),
                     "—" if r is None else f"{r:.2f}×", target,
                     "—" if met is None else ("yes" if met else "NO")))

    q = results.get("queue", {})
    p50, bp50 = get(q, "latency_p50_ms", "mage"), get(q, "latency_p50_ms", "bullmq")
    row("queue", "enqueue→start p50", p50, "BullMQ", bp50, "≤ 2 ms", None if p50 is None else p50 <= 2, " ms")
    p99, bp99 = get(q, "latency_p99_ms", "mage"), get(q, "latency_p99_ms", "bullmq")
    row("queue", "enqueue→start p99", p99, "BullMQ", bp99, "(no target)", None, " ms")
    jps, bjps = get(q, "jobs_per_s", "mage"), get(q, "jobs_per_s", "bullmq")
    row("queue", "drain 20,000 jobs", jps, "BullMQ", bjps, "≥ BullMQ",
        None if None in (jps, bjps) else jps >= bjps, "/s")

    h = results.get("holds", {})
    for who, label, ceiling in [("mage_one_user", "holds, 1 user", "pgbench_one_row"),
                                ("mage_many_users", "holds, 1,000 users", "pgbench_many_rows")]:
        m, c = get(h, "per_s", who), get(h, "per_s", ceiling)
        r = ratio(m, c)
        row("holds", label, m, "pgbench", c, "≥ 0.5× pgbench", None if r is None else r >= 0.5, "/s")

    qs = results.get("queries", {})
    floor = get(qs, "req_per_s", "typename_mage")
    row("queries", "{ __typename } (floor)", floor, "", None, "", None, "/s")
    for op in ["me", "generations"]:
        m, y = get(qs, "req_per_s", f"{op}_mage"), get(qs, "req_per_s", f"{op}_yoga")
        r = ratio(m, y)
        row("queries", f"{op} vs yoga", m, "graphql-yoga", y, "≥ 5× yoga", None if r is None else r >= 5, "/s")
        r = ratio(m, floor)
        row("queries", f"{op} vs floor", m, "__typename", floor, "≥ 0.5× floor",
            None if r is None else r >= 0.5, "/s")

    s = results.get("subscriptions", {})
    m, p = get(s, "p99_ms", "mage_10k"), get(s, "p99_ms", "peer_10k")
    row("subscriptions", "p99, 10,000 clients", m, "graphql-ws", p, "≤ 100 ms and < peer",
        None if m is None else (m <= 100 and (p is None or m < p)), " ms")
    m, p = get(s, "kib_per_conn", "mage"), get(s, "kib_per_conn", "peer")
    row("subscriptions", "memory per connection", m, "graphql-ws", p, "≤ 32 KiB and < peer",
        None if m is None else (m <= 32 and (p is None or m < p)), " KiB")

    t = results.get("transcode", {})
    m, p = get(t, "seconds", "single_pass"), get(t, "seconds", "per_rendition")
    r = ratio(m, p)
    row("transcode", "HLS ladder, 10 s 1080p", m, "ffmpeg per rendition", p, "≤ 0.6×",
        None if r is None else r <= 0.6, " s")

    u = results.get("upload", {})
    m, d = get(u, "put_mb_per_s", "mage"), get(u, "put_mb_per_s", "disk_ceiling")
    r = ratio(m, d)
    mb = get(u, "put_bytes")
    label = f"PUT {mb / 1e6:,.0f} MB" if mb else "PUT"
    row("upload", label, m, "same bytes to disk", d, "≥ 0.7×", None if r is None else r >= 0.7, " MB/s")
    m, t = get(u, "ingest_seconds", "mage"), get(u, "ingest_seconds", "transcode_alone")
    r = ratio(m, t)
    row("upload", "completeUpload→READY, 10 s 1080p", m, "transcode alone", t, "≤ 1.10×",
        None if r is None else r <= 1.10, " s")

    w = results.get("webhooks", {})
    m, f = get(w, "per_s", "mage"), get(w, "per_s", "healthz_floor")
    row("webhooks", "Stripe signed events (10% dup)", m, "GET /healthz", f, "≥ 5,000/s",
        None if m is None else m >= 5000, "/s")
    rep = w.get("replicate", {})
    m, f = get(rep, "per_s", "mage"), get(rep, "per_s", "healthz_floor")
    row("webhooks", "Replicate signed events (10% dup)", m, "GET /healthz", f, "(no target)", None, "/s")

    d = results.get("deliver", {})
    m, c = get(d, "per_s", "mage"), get(d, "per_s", "receiver_ceiling")
    r = ratio(m, c)
    n = get(d, "events")
    label = f"webhooks out, {n:,.0f} events" if n else "webhooks out"
    row("deliver", label, m, "receiver ceiling", c, "≥ 0.5× ceiling", None if r is None else r >= 0.5, "/s")

    shown = [r for r in rows if r[0] in (selected or PARTS)]
    head = ("bench", "figure", "Mage", "against", "its value", "ratio", "target", "met")
    widths = [max(len(str(x[i])) for x in [head] + shown) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in shown:
        print(line(r))
    missing = [p for p in (selected or PARTS) if p not in results]
    if missing:
        print(f"\nnot measured (failed or not run): {', '.join(missing)}")
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"\nwrote {os.path.join('bench', 'results.json')}")


if __name__ == "__main__":
    main(sys.argv[1:])

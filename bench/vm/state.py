#!/usr/bin/env python3
"""bench/vm/state.py: kept state (`state: keep`, docs/state.md) through the daemon.

For a small stateful Python function (a counter) and a large one (the counter plus
32 MiB of random bytes kept in memory): the daemon runs with a 1 MiB memory budget, so
every instance is saved to disk as soon as it goes idle and each request restores it.
Measured per round: the request that restores (client-side latency), the save (as the
daemon logs it), the saved snapshot file; then warm requests on a normal daemon, and
the peak memory `stoke usage` metered. Every counter value is checked. Prints a table
with p50/p99 and writes bench/results/state.json.

usage: bench/vm/state.py [--rounds N] [--warm N]
"""
import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from harness import Daemon  # noqa: E402

SMALL = ("count = {'n': 0}\n"
         "def handler(event, context):\n"
         "    count['n'] += 1\n"
         "    return {'n': count['n']}\n")
LARGE = "import os\nkept = os.urandom(32 << 20)\n" + SMALL
MANIFEST = {"tier": "vm", "runtime": "python3", "entry": "handler.py", "state": "keep"}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else 0.0


def dist(xs):
    """In the shape bench/report reads: one row per distribution."""
    return {"p50": pct(xs, 50), "p99": pct(xs, 99), "min": min(xs), "max": max(xs),
            "samples": len(xs)}


def metric(d, name):
    for line in d.request("GET", "/_stoke/metrics", auth=True).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_saves(d, n, timeout=30):
    deadline = time.monotonic() + timeout
    while metric(d, "stoke_vm_state_saves_total") < n:
        if time.monotonic() > deadline:
            raise RuntimeError("no state save within %d s:\n%s" % (timeout, d.logs()[-2000:]))
        time.sleep(0.02)


def invoke(d, name, want):
    t0 = time.perf_counter()
    r = d.invoke(name)
    ms = (time.perf_counter() - t0) * 1e3
    if r.status != 200 or r.json()["n"] != want:
        raise RuntimeError("%s: expected n=%d, got %d %s" % (name, want, r.status, r.text))
    return ms


def cycle(name, code, rounds):
    """Every request restores, every idle instance is saved."""
    with Daemon(env={"STOKE_MEMORY_BUDGET_MB": "1"}) as d:
        d.deploy_files(name, {"handler.py": code}, dict(MANIFEST, name=name))
        restore = []
        invoke(d, name, 1)
        wait_saves(d, 1)
        for i in range(rounds):
            restore.append(invoke(d, name, i + 2))
            wait_saves(d, i + 2)
        logs = d.cli("logs", name, "-n", "1000").stdout
        saves = [float(m) for m in re.findall(r"state saved to .*?; (\d+) ms\)", logs)]
        snap = [os.path.getsize(os.path.join(root, f))
                for root, _, fs in os.walk(os.path.join(d.data_dir, "vm-state"))
                for f in fs if f.endswith(".snap")]
        return restore, saves, sum(snap)


def warm(name, code, n):
    with Daemon() as d:
        d.deploy_files(name, {"handler.py": code}, dict(MANIFEST, name=name))
        invoke(d, name, 1)
        lat = [invoke(d, name, i + 2) for i in range(n)]
        u = d.request("GET", "/_stoke/usage?function=" + name, auth=True).json()["usage"][0]
        return lat, u["peak_memory_mb_max"], u["peak_memory_mb_avg"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warm", type=int, default=200)
    a = ap.parse_args()
    rows, out = [], {}
    for name, code in (("small", SMALL), ("large", LARGE)):
        restore, saves, snap_bytes = cycle("state-" + name, code, a.rounds)
        lat, peak_max, peak_avg = warm("warm-" + name, code, a.warm)
        out[name] = {"restore_request_ms": dist(restore), "save_ms": dist(saves),
                     "warm_request_ms": dist(lat), "snapshot_file_bytes": snap_bytes,
                     "peak_memory_mb_max": peak_max, "peak_memory_mb_avg": peak_avg}
        rows.append((name, "request that restores the state", restore))
        rows.append((name, "save (dump + layer + file)", saves))
        rows.append((name, "warm request", lat))
        rows.append((name, "peak memory MiB (max / avg)", [peak_max, peak_avg]))
    print("%-6s %-34s %6s %9s %9s" % ("fn", "what", "n", "p50", "p99"))
    for name, what, xs in rows:
        print("%-6s %-34s %6d %9.2f %9.2f" % (name, what, len(xs), pct(xs, 50), pct(xs, 99)))
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "state.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

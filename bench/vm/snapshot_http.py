#!/usr/bin/env python3
"""bench/vm/snapshot_http.py: a cold start through the daemon over HTTP, with and
without snapshots (STOKE_VM_SNAPSHOTS=1 / 0), and the deploy time they add.

For each of --functions python3 functions: deploy, invoke once (its first restore
records the working set), wait for the reaper to park a restored VM, then hold the warm
VM with a 1 s request and time a second request, which needs another VM: booted without
snapshots, the parked shell with them. Prints p50/min/max per mode.

usage: bench/vm/snapshot_http.py [--functions N]
"""
import argparse
import concurrent.futures
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from harness import Daemon  # noqa: E402

HANDLER = ("import time\n"
           "def handler(event, context):\n"
           "    if event['path'] == '/hold':\n"
           "        time.sleep(1.0)\n"
           "    return 'ok'\n")


def run(snapshots, n):
    with Daemon(env={"STOKE_VM_SNAPSHOTS": snapshots}) as d:
        names = ["f%d" % i for i in range(n)]
        deploys = []
        for name in names:
            t0 = time.perf_counter()
            d.deploy_files(name, {"handler.py": HANDLER},
                           {"name": name, "tier": "vm", "runtime": "python3",
                            "entry": "handler.py"})
            deploys.append((time.perf_counter() - t0) * 1e3)
            assert d.invoke(name).status == 200
        time.sleep(2.5)
        cold = []
        for name in names:
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                hold = ex.submit(d.invoke, name, "/hold")
                time.sleep(0.2)
                t0 = time.perf_counter()
                assert d.invoke(name).status == 200
                cold.append((time.perf_counter() - t0) * 1e3)
                hold.result()
        return sorted(deploys), sorted(cold)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--functions", type=int, default=12)
    a = ap.parse_args()
    for snapshots in ("0", "1"):
        deploys, cold = run(snapshots, a.functions)
        print("snapshots=%s: cold request p50 %.1f ms (min %.1f, max %.1f); "
              "deploy p50 %.0f ms (max %.0f)" %
              (snapshots, cold[len(cold) // 2], cold[0], cold[-1],
               deploys[len(deploys) // 2], deploys[-1]))


if __name__ == "__main__":
    main()

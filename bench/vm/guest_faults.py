#!/usr/bin/env python3
"""bench/vm/guest_faults.py: guest page faults of a restored Python hello function up to
its first response, counted from KVM's shadow-MMU tracepoints (perf, as root).

Each run restores into a generic shell (as bench/vm/snapshot.py does) with the image
evicted from the page cache, once with the working set (--snap-ws: prefetch, written
pages copied ahead, dense read-only regions as huge folios) and once without (plain
MAP_PRIVATE). perf records kvmmmu:kvm_mmu_spte_requested (one per fault KVM serves)
and kvmmmu:kvm_mmu_set_spte (also the neighbours it prefetches) on CLOCK_MONOTONIC;
only events before the response arrived count (the VM then runs on to its exit).
Columns: faults, entries set, of them prefetched (set - faults), 2 MiB entries, guest
pages mapped, writable entries. Writes bench/results/guest_faults.json.

usage: bench/vm/guest_faults.py [--runs N] [--build DIR] [--one-layer]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as vmrun  # noqa: E402
import snapshot as snapbench  # noqa: E402

EVENTS = "kvmmmu:kvm_mmu_spte_requested,kvmmmu:kvm_mmu_set_spte"


def restore_once(vmm, task, extra, img, out):
    """One evicted restore into a generic shell; writes the launch and response times."""
    proc, sock, chan = snapbench.spawn(vmm, task, True, [], shell=True)
    snapbench.wait_parked(snapbench.vmm_pid(proc, True), chan)
    snapbench.evict(img)
    t0 = time.perf_counter()
    snapbench.send_launch(sock, task, extra)
    vmrun.request(sock)
    resp = time.clock_gettime(time.CLOCK_MONOTONIC)
    ms = (time.perf_counter() - t0) * 1e3
    sock.close()
    proc.wait(timeout=30)
    with open(out, "w") as f:
        json.dump({"ms": ms, "resp": resp}, f)


def count(tmp, vmm, task, extra, img):
    data, times = os.path.join(tmp, "perf.data"), os.path.join(tmp, "t.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", vmm, task, json.dumps(img), times,
           json.dumps(extra)]
    subprocess.run(["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-o", data, "-e",
                    EVENTS, "--"] + cmd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(times) as f:
        t = json.load(f)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "time,event,trace"],
                            check=True, capture_output=True, text=True).stdout
    c = {"faults": 0, "set": 0, "huge": 0, "writable": 0, "ms": t["ms"]}
    pages = set()
    for line in script.splitlines():
        f = line.split()
        if len(f) < 4 or float(f[0].rstrip(":")) > t["resp"]:
            continue
        if "spte_requested" in f[1]:
            c["faults"] += 1
        elif "set_spte" in f[1]:
            c["set"] += 1
            pages.add(int(f[3], 16))
            c["huge"] += "level 1" not in line
            c["writable"] += "(rw" in line
    c["pages"] = len(pages)
    c["prefetched"] = c["set"] - c["faults"]
    return c


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        vmm, task, img, out, extra = sys.argv[2:7]
        restore_once(vmm, task, json.loads(extra), json.loads(img), out)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--build", default=os.path.join(vmrun.ROOT, "build"))
    ap.add_argument("--one-layer", action="store_true",
                    help="snapshot the function as one base layer (no runtime layer)")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("perf"):
        sys.exit("guest_faults: needs root and perf (KVM tracepoints)")
    vmm = os.path.join(a.build, "src/vmm/stoke-vmm")
    tmp = tempfile.mkdtemp(prefix="stoke-bench-faults-")
    os.chmod(tmp, 0o755)
    task, store = os.path.join(tmp, "task"), os.path.join(tmp, "store")
    shutil.copytree(snapbench.HELLO, task)
    res = {"with_working_set": [], "without": []}
    try:
        snap, img, ws = snapbench.take_snapshot(vmm, task, store, True, not a.one_layer)
        restore = ["--restore", snap, "--snap-store", store]
        for _ in range(a.runs):
            res["with_working_set"].append(count(tmp, vmm, task, restore + ["--snap-ws", ws],
                                                 img))
            res["without"].append(count(tmp, vmm, task, restore, img))
    finally:
        shutil.rmtree(tmp)
    keys = ("faults", "set", "prefetched", "huge", "pages", "writable", "ms")
    print("%-18s" % "evicted restore" + "".join("%11s" % k for k in keys))
    med = {}
    for name, runs in res.items():
        med[name] = {k: vmrun.pct([r[k] for r in runs], 50) for k in keys}
        print("%-18s" % name + "".join("%11.0f" % med[name][k] if k != "ms" else
                                       "%11.1f" % med[name][k] for k in keys))
    print("medians of %d runs each, interleaved; ms here include perf's overhead" % a.runs)
    os.makedirs(os.path.join(vmrun.ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(vmrun.ROOT, "bench/results/guest_faults.json"), "w") as f:
        json.dump({"runs": a.runs, "median": med, "all": res}, f, indent=1)


if __name__ == "__main__":
    main()

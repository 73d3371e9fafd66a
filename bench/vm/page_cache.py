#!/usr/bin/env python3
"""bench/vm/page_cache.py: page cache that N Python functions on one runtime take for
their restore images, each with one restored VM that served a request.

Drives build/src/vmm/stoke-vmm directly (as bench/vm/snapshot.py does): python3 boots
once with no function (base and runtime layers), then N copies of examples/hello-py,
each made distinct by one constant, become function layers on that runtime; each gets
its working set recorded. Every image file is then dropped from the page cache, one VM
per function is restored the way the tier parks them (working set prefetched and
touched, --snap-touch) and answers a request, and fincore(1) reports how much of each
image file is cached. Run it with an older build (--build) to compare image forms: one
flat image per function, or the runtime's image shared by all of them plus a small
file of each function's own pages. Writes bench/results/page_cache.json.

usage: bench/vm/page_cache.py [--functions N] [--build DIR] [--no-jail]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as vmrun  # noqa: E402
import snapshot as snapbench  # noqa: E402


def cached_bytes(path):
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def functions(vmm, tmp, store, jail, n):
    """n distinct hello functions on one runtime: [(task, snapshot, working set)]."""
    snapbench.take_runtime(vmm, store, jail)
    out = []
    for i in range(n):
        task = os.path.join(tmp, "task%d" % i)
        shutil.copytree(snapbench.HELLO, task)
        with open(os.path.join(task, "handler.py"), "a") as f:
            f.write("\nFUNCTION_NUMBER = %d\n" % i)
        snap = snapbench.take_function(vmm, task, store, jail, "fn%d" % i)
        raw = os.path.join(tmp, "fn%d.wsraw" % i)
        proc, sock, _ = snapbench.spawn(vmm, task, jail, ["--restore", snap, "--snap-store",
                                                          store, "--ws-out", raw])
        vmrun.request(sock)
        sock.close()
        proc.wait(timeout=30)
        before = set(os.listdir(os.path.join(store, "images")))
        subprocess.run([vmm, "--commit-ws", raw, store], check=True)
        ws, = set(os.listdir(os.path.join(store, "images"))) - before
        out.append((task, snap, os.path.join(store, "images", ws)))
    return out


def measure(vmm, store, fns, jail):
    images = os.path.join(store, "images")
    files = [os.path.join(images, f) for f in sorted(os.listdir(images))
             if not f.endswith(".ws")]
    snapbench.evict(files)
    vms = []
    try:
        for task, snap, ws in fns:
            extra = ["--restore", snap, "--snap-store", store, "--snap-ws", ws,
                     "--snap-touch"]
            proc, sock, chan = snapbench.spawn(vmm, task, jail, extra)
            snapbench.wait_parked(snapbench.vmm_pid(proc, jail), chan)
            vmrun.request(sock)
            vms.append((proc, sock))
        time.sleep(0.2)   # the populate threads and readahead children finish
        cached = {os.path.basename(f): cached_bytes(f) for f in files}
    finally:
        for proc, sock in vms:
            sock.close()
            proc.wait(timeout=30)
    return cached


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--functions", type=int, default=5)
    ap.add_argument("--build", default=os.path.join(vmrun.ROOT, "build"))
    ap.add_argument("--no-jail", action="store_true")
    a = ap.parse_args()
    vmm, jail, tmp = snapbench.bench_setup(a, "stoke-bench-pagecache-")
    store = os.path.join(tmp, "store")
    try:
        fns = functions(vmm, tmp, store, jail, a.functions)
        cached = measure(vmm, store, fns, jail)
        images = os.path.join(store, "images")
        allocated = {f: os.stat(os.path.join(images, f)).st_blocks * 512 for f in cached}
    finally:
        shutil.rmtree(tmp)
    mib = 1 << 20
    print("%-16s %6s %14s %14s" % ("image file", "", "cached MiB", "on disk MiB"))
    for f in sorted(cached, key=lambda f: -allocated[f]):
        print("%-16s %6s %14.2f %14.2f" % (f[:12] + "..", f.split(".")[-1], cached[f] / mib,
                                          allocated[f] / mib))
    total, disk = sum(cached.values()), sum(allocated.values())
    print("%d functions, one VM each: %.1f MiB of image page cache (%.2f MiB per function), "
          "%.1f MiB of images on disk" % (a.functions, total / mib,
                                          total / mib / a.functions, disk / mib))
    res = {"functions": a.functions, "jail": jail, "cached_bytes": cached,
           "allocated_bytes": allocated, "cached_total_bytes": total,
           "allocated_total_bytes": disk}
    os.makedirs(os.path.join(vmrun.ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(vmrun.ROOT, "bench/results/page_cache.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

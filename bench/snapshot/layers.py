#!/usr/bin/env python3
"""Snapshot creation with layers, on real python3 VMs (stoke-vmm driven directly).

Per round, in a fresh page store:
  1. the runtime: python3 booted with no function, dumped when the program is loaded
     (base layer) and when it waits for its first frame (runtime layer);
  2. N functions, each: the runtime restored, its module imported (load frame), the
     pages that changed dumped and stored as that function's layer;
  3. for comparison, the same N functions as one layer per version (booted, dumped at
     the first read: what stoke did before runtime layers), in a second store.

Prints creation times (p50/p99 over rounds), pages and stored bytes per layer, and the
dedup ratio: pages the functions' snapshots reference (each function's whole memory
image, its non-zero pages) over distinct pages stored. Writes bench/results/snapshot.json.

    bench/snapshot/run [--rounds 3] [--functions 4] [--quick]

Needs /dev/kvm, a build (stoke-vmm) and the python3 rootfs (~/.cache/stoke/rootfs/python3,
made by scripts/setup). Guests have 256 MiB.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "bench", "results", "snapshot.json")
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import snaptools  # noqa: E402
DUMP_WAIT_S = 60

# Functions of different weights: the example, a table built at import, a regex- and
# hashlib-heavy module, a larger data structure.
FUNCTIONS = {
    "hello-py": open(os.path.join(ROOT, "examples", "hello-py", "handler.py")).read()
    if os.path.exists(os.path.join(ROOT, "examples", "hello-py", "handler.py")) else
    "def handler(event, context):\n    return 'hello'\n",
    "table": "import json\nT = {str(i): i * i for i in range(30000)}\n"
             "def handler(e, c):\n    return json.dumps({'v': T['77']})\n",
    "regex": "import re, hashlib\nR = [re.compile(r'^/item/(\\d+)/%d$' % i) for i in range(300)]\n"
             "H = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]\n"
             "def handler(e, c):\n    return H[7]\n",
    "objects": "class P:\n    def __init__(s, i):\n        s.i = i; s.name = 'p%d' % i\n"
               "PS = [P(i) for i in range(50000)]\n"
               "def handler(e, c):\n    return PS[9].name\n",
}


def start_vm(extra, mode, task=None):
    return snaptools.Vmm(task, *extra, mode=mode)


def dump(vm, path):
    """Waits for the VM's dump at path, then ends the VM (end of file on its channel)."""
    if not snaptools.wait_dump(path, vm.proc, DUMP_WAIT_S):
        raise SystemExit("no dump: " + vm.close()[-2000:])
    vm.close()


def load(vm):
    vm.load({"STOKE_ENTRY": "handler.py", "STOKE_CHANNEL_FD": "3"})


def build(*args):
    r = subprocess.run([snaptools.VMM] + list(args), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit("stoke-vmm %s: %s" % (args[0], r.stderr))
    return json.loads(r.stdout)


def store_usage(store):
    """(page files, their bytes, their allocated bytes)."""
    n = size = alloc = 0
    top = os.path.join(store, "pages")
    for d in os.listdir(top):
        for f in os.listdir(os.path.join(top, d)):
            st = os.stat(os.path.join(top, d, f))
            n, size, alloc = n + 1, size + st.st_size, alloc + st.st_blocks * 512
    return n, size, alloc


def image_pages(store, top):
    """Non-zero pages of the memory a chain restores (its flattened layers)."""
    pages, lid = {}, top
    while lid:
        entries, lid = snaptools.layer_entries(store, lid)
        for g, pid in entries.items():
            pages.setdefault(g, pid)
    return sum(1 for pid in pages.values() if pid != snaptools.ZERO_ID)


def one_round(tmp, names, tasks):
    """Creation times and layer figures of one round in a fresh store."""
    p = lambda n: os.path.join(tmp, n)
    store, single = p("store"), p("single")
    out = {"runtime_ms": 0, "function_ms": [], "single_ms": [], "layers": []}
    t0 = time.monotonic()
    vm = start_vm(["--snapshot-base-dump=" + p("base.dump"),
                   "--snapshot-dump=" + p("rt.dump")], "runtime")
    dump(vm, p("rt.dump"))
    info = build("--build-runtime", p("base.dump"), p("rt.dump"), store, p("rt.snap"))
    out["runtime_ms"] = (time.monotonic() - t0) * 1e3
    base, rt = info["layers"][1], info["layers"][0]
    out["layers"] += [dict(base, kind="base", name="python3"),
                      dict(rt, kind="runtime", name="python3")]
    tops = []
    for name in names:
        t0 = time.monotonic()
        vm = start_vm(["--restore=" + p("rt.snap"), "--snap-store=" + store,
                       "--snapshot-dump=" + p(name + ".dump")], "1", tasks[name])
        load(vm)
        dump(vm, p(name + ".dump"))
        info = build("--build-snapshot", p(name + ".dump"), store, p(name + ".snap"))
        out["function_ms"].append((time.monotonic() - t0) * 1e3)
        out["layers"].append(dict(info["layers"][0], kind="function", name=name))
        tops.append(info["layers"][0]["id"])
        os.unlink(p(name + ".dump"))
    single_tops = []
    for name in names:
        t0 = time.monotonic()
        vm = start_vm(["--snapshot-dump=" + p(name + ".1.dump")], "1", tasks[name])
        dump(vm, p(name + ".1.dump"))
        info = build("--build-snapshot", p(name + ".1.dump"), single, p(name + ".1.snap"))
        out["single_ms"].append((time.monotonic() - t0) * 1e3)
        single_tops.append(info["layers"][0]["id"])
        os.unlink(p(name + ".1.dump"))
    referenced = sum(image_pages(store, t) for t in tops)
    pages, size, alloc = store_usage(store)
    s_ref = sum(image_pages(single, t) for t in single_tops)
    s_pages, s_size, s_alloc = store_usage(single)
    out["store"] = {"pages_referenced": referenced, "pages_stored": pages,
                    "bytes_stored": size, "bytes_allocated": alloc,
                    "dedup_ratio": referenced / pages}
    out["single_layer_store"] = {"pages_referenced": s_ref, "pages_stored": s_pages,
                                 "bytes_stored": s_size, "bytes_allocated": s_alloc,
                                 "dedup_ratio": s_ref / s_pages}
    return out


def dist(xs):
    xs = sorted(xs)
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"p50": round(pick(0.5), 1), "p99": round(pick(0.99), 1),
            "min": round(xs[0], 1), "max": round(xs[-1], 1), "samples": len(xs)}


def report(rounds, names, args):
    last = rounds[-1]
    res = {
        "functions": names, "rounds": len(rounds), "mem_mb": 256,
        "runtime_layer_create_ms": dist([r["runtime_ms"] for r in rounds]),
        "function_layer_create_ms": dist([x for r in rounds for x in r["function_ms"]]),
        "single_layer_create_ms": dist([x for r in rounds for x in r["single_ms"]]),
        "layers": [{k: l[k] for k in ("kind", "name", "pages", "new", "dup", "bytes_new",
                                       "compared", "id")} for l in last["layers"]],
        "store": last["store"], "single_layer_store": last["single_layer_store"],
    }
    print("snapshot creation (%d rounds, %d functions on one python3 runtime, %d MiB; "
          "layer build includes storing pages and assembling the image)"
          % (len(rounds), len(names), 256))
    print("%-52s %5s %9s %9s" % ("what", "n", "p50 ms", "p99 ms"))
    for key, what in (("runtime_layer_create_ms", "runtime: boot, base + runtime layers"),
                      ("function_layer_create_ms", "function: restore runtime, import, layer"),
                      ("single_layer_create_ms", "one layer per version: boot, layer")):
        d = res[key]
        print("%-52s %5d %9.1f %9.1f" % (what, d["samples"], d["p50"], d["p99"]))
    print()
    print("%-9s %-10s %7s %7s %7s %12s" % ("layer", "name", "pages", "new", "dup",
                                           "stored bytes"))
    for l in res["layers"]:
        print("%-9s %-10s %7d %7d %7d %12d" % (l["kind"], l["name"], l["pages"], l["new"],
                                                l["dup"], l["bytes_new"]))
    for key, what in (("store", "layered"), ("single_layer_store", "one layer per version")):
        s = res[key]
        print("%-22s referenced %6d pages, stored %6d (%.1f MiB, %.1f MiB allocated): "
              "dedup %.2fx" % (what, s["pages_referenced"], s["pages_stored"],
                                s["bytes_stored"] / 2**20, s["bytes_allocated"] / 2**20,
                                s["dedup_ratio"]))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--functions", type=int, default=len(FUNCTIONS))
    ap.add_argument("--quick", action="store_true", help="one round, two functions")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("-d", "--dir", help="directory for the stores (local disk)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.functions = 1, 2
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or not os.path.isdir(snaptools.ROOTFS):
        raise SystemExit("needs /dev/kvm and the python3 root file system (scripts/setup)")
    names = list(FUNCTIONS)[:max(2, min(args.functions, len(FUNCTIONS)))]
    rounds = []
    for i in range(max(1, min(args.rounds, 50))):
        tmp = tempfile.mkdtemp(prefix="stoke-bench-layers-", dir=args.dir)
        try:
            tasks = {}
            for n in names:
                tasks[n] = os.path.join(tmp, "task-" + n)
                os.makedirs(tasks[n])
                with open(os.path.join(tasks[n], "handler.py"), "w") as f:
                    f.write(FUNCTIONS[n])
            rounds.append(one_round(tmp, names, tasks))
        finally:
            shutil.rmtree(tmp)
    res = report(rounds, names, args)
    res["command"] = " ".join(["bench/snapshot/run"] + sys.argv[1:])
    res["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print("wrote", os.path.relpath(args.out, ROOT))


if __name__ == "__main__":
    main()

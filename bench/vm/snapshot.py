#!/usr/bin/env python3
"""bench/vm/snapshot.py: restore to first response of a Python hello function, beside
the cold boot measured in the same run (variants interleaved run by run).

Drives build/src/vmm/stoke-vmm directly over the channel, as bench/vm/run.py does:
  boot          spawn stoke-vmm -> python3 boots -> first response
  restore       spawn stoke-vmm --restore (working set prefetched) -> first response
  shell         a VMM spawned and restored ahead of the request (a pre-created VM shell,
                parked in the pending read): request sent -> first response
  generic_shell a VMM spawned ahead as a generic shell (--shell: jail, VM and vCPU, no
                function yet): launch frame + request sent -> first response
  shell_touch   the same as shell, the guest having touched its working set before parking
                (--snap-touch: the VM tier's shells); also spawn -> parked
  restore_huge, shell_huge   with the working set's 2 MiB regions in private huge pages
  evicted_ws    image evicted (posix_fadvise DONTNEED), restore prefetching the working set
  evicted_lazy  image evicted, restore without a working set (guest faults bring pages in)
  warm_ws_same_runs, warm_lazy_same_runs   the two restores with the cache warm, right
                after the evicted ones: what eviction adds is the difference
  evicted_ws_generic, evicted_lazy_generic   the evicted pair restored into generic
                shells (no process, jail or VM creation on the measured path)
  memory        per idle VM after its first request: unshared memory (anonymous pages
                and page tables of its processes), its cgroup's charge (KVM kernel memory
                included) and the old Private_Clean + Private_Dirty figure
Prints a table and writes bench/results/snapshot_restore.json.

usage: bench/vm/snapshot.py [--runs N] [--cgroup-vms N] [--build DIR] [--no-jail]
                           [--one-layer]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as vmrun  # noqa: E402  (bench/vm/run.py: frames, requests, percentiles)

ROOT = vmrun.ROOT
HELLO = os.path.join(ROOT, "examples", "hello-py")


def function_args(task, extra):
    """The function's part of a stoke-vmm command line (a generic shell gets it later)."""
    return (["--task", task, "--mem-mb", "256", "--rootfs", vmrun.ROOTFS,
             "--runtime", os.path.join(ROOT, "runtimes/python3"),
             "--env", "STOKE_ENTRY=handler.py", "--env", "STOKE_SNAPSHOT=1"] + extra +
            ["--", "/usr/bin/python3", "-S", "/var/runtime/bootstrap.py"])


def spawn(vmm, task, jail, extra, stderr=None, shell=False):
    """Starts a VMM on a socketpair; with stderr (a file) the guest's stdout is dropped.
    shell: a generic shell (--shell), whose function comes later (send_launch)."""
    ours, theirs = socket.socketpair()
    args = [vmm, "--channel-fd", str(theirs.fileno())] + ([] if jail else ["--no-jail"])
    args += ["--shell", "--mem-mb", "256"] + extra if shell else function_args(task, extra)
    out = subprocess.DEVNULL if stderr else None
    try:
        proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], stdout=out, stderr=stderr)
    except OSError:
        ours.close()
        theirs.close()
        raise
    chan = theirs.fileno()
    theirs.close()
    return proc, ours, chan


def vmm_pid(proc, jail):
    """The process running the VM (jailed, the supervisor's only child)."""
    if not jail:
        return proc.pid
    for _ in range(2000):
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.001)
    raise RuntimeError("no VMM process")


def wait_parked(pid, chan, timeout=10):
    """Until the VMM blocks in read() on the channel (the restored guest awaits a
    request) or in recvfrom() (a generic shell awaits its launch)."""
    want = ("0 %s " % hex(chan), "45 %s " % hex(chan))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().startswith(want):
                return
        time.sleep(0.0005)
    raise RuntimeError("the VM never waited for its request")


def take_snapshot(vmm, task, store, jail, layered=True):
    """The function's snapshot (layered: the tier's three-layer chain; otherwise one
    base layer taken at the first read) and its working set. Returns the snapshot file,
    every image file of the store (an eviction drops them all) and the working set."""
    dump = os.path.join(os.path.dirname(store), "hello.dump")
    snap = os.path.join(os.path.dirname(store), "hello.snap")
    if layered:
        take_layered(vmm, task, store, jail)
    else:
        proc, sock, _ = spawn(vmm, task, jail, ["--snapshot-dump", dump])
        vmrun.request(sock)  # the dump is complete before the request is read
        sock.close()
        proc.wait(timeout=30)
        subprocess.run([vmm, "--build-snapshot", dump, store, snap], check=True)
    raw = os.path.join(os.path.dirname(store), "hello.wsraw")
    proc, sock, _ = spawn(vmm, task, jail, ["--restore", snap, "--snap-store", store,
                                            "--ws-out", raw])
    vmrun.request(sock)
    sock.close()
    proc.wait(timeout=30)
    subprocess.run([vmm, "--commit-ws", raw, store], check=True)
    images = os.path.join(store, "images")
    ws = [os.path.join(images, f) for f in os.listdir(images) if f.endswith(".ws")][0]
    return snap, [os.path.join(images, f) for f in os.listdir(images)
                  if not f.endswith(".ws")], ws


def wait_dump(path, proc, timeout=120):
    """Until stoke-vmm wrote a whole dump at path (its magic is written last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, "rb") as f:
                magic = f.read(8)
            if magic == b"STOKDUMP":
                return
            if magic == b"STOKNONE":
                break
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    raise RuntimeError("no snapshot dump at " + path)


def take_layered(vmm, task, store, jail):
    """The VM tier's chain: base and runtime layers from one boot of python3 with no
    function, then the function's layer from that runtime restored and sent a load
    frame (channel type 4) that imports examples/hello-py."""
    take_runtime(vmm, store, jail)
    return take_function(vmm, task, store, jail, "hello")


def take_runtime(vmm, store, jail):
    """Boots python3 with no function: base and runtime layers, rt.snap beside store."""
    p = lambda name: os.path.join(os.path.dirname(store), name)
    ours, theirs = socket.socketpair()
    args = [vmm, "--channel-fd", str(theirs.fileno())] + ([] if jail else ["--no-jail"])
    args += ["--mem-mb", "256", "--rootfs", vmrun.ROOTFS,
             "--runtime", os.path.join(ROOT, "runtimes/python3"),
             "--env", "STOKE_SNAPSHOT=runtime", "--snapshot-base-dump", p("base.dump"),
             "--snapshot-dump", p("rt.dump"),
             "--", "/usr/bin/python3", "-S", "/var/runtime/bootstrap.py"]
    proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], stdout=subprocess.DEVNULL)
    theirs.close()
    wait_dump(p("rt.dump"), proc)
    ours.close()
    proc.wait(timeout=30)
    subprocess.run([vmm, "--build-runtime", p("base.dump"), p("rt.dump"), store,
                    p("rt.snap")], check=True, stdout=subprocess.DEVNULL)


def take_function(vmm, task, store, jail, name):
    """The function in task as a layer on the runtime (take_runtime): NAME.snap."""
    p = lambda f: os.path.join(os.path.dirname(store), f)
    proc, sock, _ = spawn(vmm, task, jail, ["--restore", p("rt.snap"), "--snap-store", store,
                                            "--snapshot-dump", p(name + ".dump")])
    env = json.dumps({"env": {"STOKE_ENTRY": "handler.py", "STOKE_CHANNEL_FD": "3"}})
    sock.sendall(len(env).to_bytes(4, "little") + bytes([4, 1, 0, 0]) + env.encode())
    wait_dump(p(name + ".dump"), proc)
    sock.close()
    proc.wait(timeout=30)
    subprocess.run([vmm, "--build-snapshot", p(name + ".dump"), store, p(name + ".snap")],
                   check=True, stdout=subprocess.DEVNULL)
    return p(name + ".snap")


def smaps_kb(pid, fields):
    out = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.split(":")[0] in fields:
                out += int(line.split()[1])
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.split(":")[0] in fields:
                out += int(line.split()[1])
    return out


def rss_private_kb(pid):
    """The old figure: pages only this process maps. It counts the restore image's page
    cache as private when no other VM maps it, although every VM would share it."""
    return smaps_kb(pid, ("Private_Clean", "Private_Dirty"))


def unshared_kb(pid, jail):
    """What one more VM costs in its processes: anonymous memory (proportional share of
    what the supervisor and VMM share after fork) and page tables, of both processes.
    File pages (the image, binaries) are shared page cache and not counted."""
    pids = [pid, vmm_pid_of(pid)] if jail else [pid]
    return sum(smaps_kb(p, ("Pss_Anon", "VmPTE")) for p in pids if p)


def vmm_pid_of(supervisor):
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        kids = f.read().split()
    return int(kids[0]) if kids else None


def evict(images):
    for img in images:
        fd = os.open(img, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def idle_memory(proc, jail, mem):
    """Memory of an idle VM after its first request: (unshared KiB, old-metric KiB)."""
    time.sleep(0.05)
    mem.append((unshared_kb(proc.pid, jail), rss_private_kb(vmm_pid(proc, jail))))


def one(vmm, task, jail, extra, mem=None):
    t0 = time.perf_counter()
    proc, sock, _ = spawn(vmm, task, jail, extra)
    vmrun.request(sock)
    ms = (time.perf_counter() - t0) * 1e3
    if mem is not None:
        idle_memory(proc, jail, mem)
    sock.close()
    proc.wait(timeout=30)
    return ms


def one_shell(vmm, task, jail, extra, mem=None, park=None):
    t0 = time.perf_counter()
    proc, sock, chan = spawn(vmm, task, jail, extra)
    wait_parked(vmm_pid(proc, jail), chan)
    t1 = time.perf_counter()
    vmrun.request(sock)
    ms = (time.perf_counter() - t1) * 1e3
    if park is not None:
        park.append((t1 - t0) * 1e3)
    if mem is not None:
        idle_memory(proc, jail, mem)
    sock.close()
    proc.wait(timeout=30)
    return ms


def send_launch(sock, task, extra):
    """Tells a generic shell its function: one launch frame (type 6), NUL-separated."""
    payload = b"".join(a.encode() + b"\0" for a in function_args(task, extra))
    sock.sendall(len(payload).to_bytes(4, "little") + bytes([6, 1, 0, 0]) + payload)


def one_generic(vmm, task, jail, extra):
    """A generic shell (jail, VM and vCPU made before the function is known): from
    sending its launch to the first response."""
    proc, sock, chan = spawn(vmm, task, jail, [], shell=True)
    wait_parked(vmm_pid(proc, jail), chan)
    t0 = time.perf_counter()
    send_launch(sock, task, extra)
    vmrun.request(sock)
    ms = (time.perf_counter() - t0) * 1e3
    sock.close()
    proc.wait(timeout=30)
    return ms


def summary(xs):
    return {"p50": vmrun.pct(xs, 50), "p99": vmrun.pct(xs, 99), "min": min(xs),
            "max": max(xs), "n": len(xs)}


def cgroup_bytes(supervisor_pid):
    """Memory charged to a VM's own cgroup (--cgroup=auto: stoke-vm-<supervisor pid>):
    the VMM's anonymous memory and page tables, and the kernel memory KVM allocates for
    the VM (memory-slot maps, vCPU, shadow page tables)."""
    for path in ("/sys/fs/cgroup/stoke-vm-%d/memory.current",
                 "/sys/fs/cgroup/memory/stoke-vm-%d/memory.usage_in_bytes"):
        try:
            with open(path % supervisor_pid) as f:
                return int(f.read())
        except OSError:
            pass
    return None


def cgroup_mib(vmm, task, jail, extra, shell, k):
    """Median cgroup charge of k idle VMs of a variant after their first request."""
    if not jail:
        return None
    got = []
    for _ in range(k):
        proc, sock, chan = spawn(vmm, task, jail, extra + ["--cgroup=auto"])
        if shell:
            wait_parked(vmm_pid(proc, jail), chan)
        vmrun.request(sock)
        time.sleep(0.05)
        b = cgroup_bytes(proc.pid)
        if b is not None:
            got.append(b / (1 << 20))
        sock.close()
        proc.wait(timeout=30)
    return vmrun.pct(got, 50) if got else None


def measure(vmm, task, jail, runs, snap, img, ws, store):
    restore = ["--restore", snap, "--snap-store", store]
    prefetch = restore + ["--snap-ws", ws]
    touch = prefetch + ["--snap-touch"]
    huge = prefetch + ["--snap-huge"]
    r = {k: [] for k in ("boot", "restore", "generic_shell", "shell", "shell_touch",
                         "restore_huge",
                         "shell_huge", "evicted_ws", "evicted_lazy", "warm_ws_same_runs",
                         "warm_lazy_same_runs", "evicted_ws_generic", "evicted_lazy_generic")}
    mem = {"boot": [], "restore": [], "shell_touch": [], "restore_huge": []}
    park = []
    for i in range(runs):
        m = i % 10 == 0
        r["restore"].append(one(vmm, task, jail, prefetch, mem["restore"] if m else None))
        r["generic_shell"].append(one_generic(vmm, task, jail, prefetch))
        r["shell"].append(one_shell(vmm, task, jail, prefetch))
        r["shell_touch"].append(one_shell(vmm, task, jail, touch,
                                          mem["shell_touch"] if m else None, park))
        r["restore_huge"].append(one(vmm, task, jail, huge, mem["restore_huge"] if m else None))
        r["shell_huge"].append(one_shell(vmm, task, jail, huge))
        # The evicted pairs every time (each figure over --runs restores); the cold
        # boot, the slow peer, a fifth as often: same background load, shorter run.
        evicted(vmm, task, jail, img, prefetch, restore, r)
        if i % 5 == 0:
            r["boot"].append(one(vmm, task, jail, [], mem["boot"] if m else None))
    return r, mem, park


def evicted(vmm, task, jail, img, prefetch, restore, r):
    """Image dropped from the page cache: prefetched vs lazy, and the same spawn path
    with a warm cache right after (what eviction adds is the difference)."""
    evict(img)
    r["evicted_ws"].append(one(vmm, task, jail, prefetch))
    evict(img)
    r["evicted_lazy"].append(one(vmm, task, jail, restore))
    r["warm_ws_same_runs"].append(one(vmm, task, jail, prefetch))
    r["warm_lazy_same_runs"].append(one(vmm, task, jail, restore))
    evict(img)
    r["evicted_ws_generic"].append(one_generic(vmm, task, jail, prefetch))
    evict(img)
    r["evicted_lazy_generic"].append(one_generic(vmm, task, jail, restore))


def cgroup_memory(vmm, task, jail, snap, ws, store, k):
    restore = ["--restore", snap, "--snap-store", store, "--snap-ws", ws]
    variants = {"boot": ([], False), "restore": (restore, False),
                "shell_touch": (restore + ["--snap-touch"], True),
                "restore_huge": (restore + ["--snap-huge"], False)}
    return {name: cgroup_mib(vmm, task, jail, extra, shell, k)
            for name, (extra, shell) in variants.items()}


def print_table(res):
    print("%-20s %6s %9s %9s %9s" % ("variant", "n", "p50 ms", "p99 ms", "min ms"))
    for k, s in res["first_response_ms"].items():
        print("%-20s %6d %9.2f %9.2f %9.2f" % (k, s["n"], s["p50"], s["p99"], s["min"]))
    p = res["shell_touch_park_ms"]
    print("shell_touch: spawn to parked (off the request path) p50 %.1f ms, p99 %.1f ms"
          % (p["p50"], p["p99"]))
    ev = res["evicted"]
    print("evicted image, lazy / prefetched (p50): %.2fx into generic shells (process set-up "
          "in neither: target 3x), %.2fx with spawn; what eviction adds: lazy %.1f ms, "
          "prefetched %.1f ms" % (ev["ratio_generic_p50"], ev["ratio_p50"],
                                  ev["lazy_added_ms"], ev["prefetched_added_ms"]))
    print("\n%-15s %13s %13s %15s" % ("idle VM memory", "unshared MiB", "cgroup MiB",
                                       "old metric MiB"))
    for k, v in res["idle_vm_memory_mib"].items():
        print("%-15s %13.1f %13s %15.1f" % (k, v["unshared"], "%.1f" % v["cgroup"]
                                            if v["cgroup"] is not None else "-",
                                            v["rss_private"]))
    print("unshared: anonymous memory and page tables of the VMM and its supervisor "
          "(shared page cache not counted); cgroup: the VM's cgroup charge, KVM's kernel "
          "memory included; old metric: Private_Clean + Private_Dirty (counts the image's "
          "page cache when no other VM maps it). Host memory with kernel objects: "
          "bench/vm/density.py.")


def bench_setup(args, prefix):
    """The VMM of args.build, whether to jail it (root, no --no-jail) and a temporary
    directory its unprivileged jailed self can read."""
    vmm = os.path.join(args.build, "src/vmm/stoke-vmm")
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.chmod(tmp, 0o755)
    return vmm, not args.no_jail and os.geteuid() == 0, tmp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--no-jail", action="store_true")
    ap.add_argument("--one-layer", action="store_true",
                    help="snapshot the function as one base layer (before runtime layers)")
    ap.add_argument("--cgroup-vms", type=int, default=5,
                    help="VMs per variant whose cgroup charge is read")
    a = ap.parse_args()
    vmm, jail, tmp = bench_setup(a, "stoke-bench-snap-")
    task = os.path.join(tmp, "task")
    store = os.path.join(tmp, "store")
    shutil.copytree(HELLO, task)
    try:
        snap, img, ws = take_snapshot(vmm, task, store, jail, not a.one_layer)
        r, mem, park = measure(vmm, task, jail, a.runs, snap, img, ws, store)
        cgroups = cgroup_memory(vmm, task, jail, snap, ws, store, a.cgroup_vms)
    finally:
        shutil.rmtree(tmp)
    first = {k: summary(v) for k, v in r.items()}
    res = {"runs": a.runs, "jail": jail, "function": "examples/hello-py",
           "snapshot": "one layer" if a.one_layer else "base, runtime, function layers",
           "first_response_ms": first, "shell_touch_park_ms": summary(park),
           "evicted": {"ratio_p50": first["evicted_lazy"]["p50"] / first["evicted_ws"]["p50"],
                       "ratio_generic_p50": first["evicted_lazy_generic"]["p50"] /
                       first["evicted_ws_generic"]["p50"],
                       "lazy_added_ms": first["evicted_lazy"]["p50"] -
                       first["warm_lazy_same_runs"]["p50"],
                       "prefetched_added_ms": first["evicted_ws"]["p50"] -
                       first["warm_ws_same_runs"]["p50"]},
           "idle_vm_memory_mib": {k: {"unshared": vmrun.pct([u for u, _ in v], 50) / 1024,
                                      "rss_private": vmrun.pct([o for _, o in v], 50) / 1024,
                                      "cgroup": cgroups[k]} for k, v in mem.items()},
           "target": {"shell_touch_p50_ms": 3, "shell_touch_p99_ms": 8,
                      "idle_vm_unshared_mib": 8, "evicted_ratio_generic": 3}}
    print_table(res)
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/snapshot_restore.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

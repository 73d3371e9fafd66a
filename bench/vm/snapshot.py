#!/usr/bin/env python3
"""bench/vm/snapshot.py: restore to first response of a Python hello function, beside
the cold boot measured in the same run (variants interleaved run by run).

Drives build/src/vmm/stoke-vmm directly over the channel, as bench/vm/run.py does:
  boot          spawn stoke-vmm -> python3 boots -> first response
  restore       spawn stoke-vmm --restore (working set prefetched) -> first response
  shell         a VMM spawned and restored ahead of the request (a pre-created VM shell,
                parked in the pending read): request sent -> first response
  evicted_ws    image evicted (posix_fadvise DONTNEED), restore prefetching the working set
  evicted_lazy  image evicted, restore without a working set (guest faults bring pages in)
  memory        private memory (smaps_rollup) of an idle restored VM vs an idle booted one
Prints a table and writes bench/results/snapshot_restore.json.

usage: bench/vm/snapshot.py [--runs N] [--build DIR] [--no-jail]
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


def spawn(vmm, task, jail, extra, stderr=None):
    """Starts a VMM on a socketpair; with stderr (a file) the guest's stdout is dropped."""
    ours, theirs = socket.socketpair()
    args = [vmm, "--channel-fd", str(theirs.fileno()), "--task", task, "--mem-mb", "256",
            "--rootfs", vmrun.ROOTFS, "--runtime", os.path.join(ROOT, "runtimes/python3"),
            "--env", "STOKE_ENTRY=handler.py", "--env", "STOKE_SNAPSHOT=1"] + extra
    if not jail:
        args.append("--no-jail")
    args += ["--", "/usr/bin/python3", "-S", "/var/runtime/bootstrap.py"]
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
    """Until the VMM blocks in read() on the channel: the restored guest awaits a request."""
    want = "0 %s " % hex(chan)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().startswith(want):
                return
        time.sleep(0.0005)
    raise RuntimeError("the VM never waited for its request")


def take_snapshot(vmm, task, store, jail):
    dump = os.path.join(os.path.dirname(store), "hello.dump")
    snap = os.path.join(os.path.dirname(store), "hello.snap")
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
    img = [f for f in os.listdir(os.path.join(store, "images")) if f.endswith(".img")][0]
    img = os.path.join(store, "images", img)
    return snap, img, img[:-4] + ".ws"


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


def evict(img):
    fd = os.open(img, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def one(vmm, task, jail, extra, mem=None):
    t0 = time.perf_counter()
    proc, sock, _ = spawn(vmm, task, jail, extra)
    vmrun.request(sock)
    ms = (time.perf_counter() - t0) * 1e3
    if mem is not None:
        time.sleep(0.05)
        mem.append(private_kb(vmm_pid(proc, jail)))
    sock.close()
    proc.wait(timeout=30)
    return ms


def one_shell(vmm, task, jail, extra):
    proc, sock, chan = spawn(vmm, task, jail, extra)
    wait_parked(vmm_pid(proc, jail), chan)
    t0 = time.perf_counter()
    vmrun.request(sock)
    ms = (time.perf_counter() - t0) * 1e3
    sock.close()
    proc.wait(timeout=30)
    return ms


def summary(xs):
    return {"p50": vmrun.pct(xs, 50), "p99": vmrun.pct(xs, 99), "min": min(xs),
            "max": max(xs), "n": len(xs)}


def measure(vmm, task, jail, runs, snap, img, ws, store):
    restore = ["--restore", snap, "--snap-store", store]
    huge = restore + ["--snap-ws", ws, "--snap-huge"]
    r = {k: [] for k in ("boot", "restore", "shell", "restore_huge", "shell_huge",
                         "evicted_ws", "evicted_lazy")}
    mem = {"boot": [], "restore": [], "restore_huge": []}
    for i in range(runs):
        r["restore"].append(one(vmm, task, jail, restore + ["--snap-ws", ws],
                                mem["restore"] if i % 10 == 0 else None))
        r["shell"].append(one_shell(vmm, task, jail, restore + ["--snap-ws", ws]))
        r["restore_huge"].append(one(vmm, task, jail, huge,
                                     mem["restore_huge"] if i % 10 == 0 else None))
        r["shell_huge"].append(one_shell(vmm, task, jail, huge))
        # The slow variants a fifth as often: same background load, shorter run.
        if i % 5 == 0:
            r["boot"].append(one(vmm, task, jail, [], mem["boot"] if i % 10 == 0 else None))
            evict(img)
            r["evicted_ws"].append(one(vmm, task, jail, restore + ["--snap-ws", ws]))
            evict(img)
            r["evicted_lazy"].append(one(vmm, task, jail, restore))
    return r, mem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--no-jail", action="store_true")
    a = ap.parse_args()
    vmm = os.path.join(a.build, "src/vmm/stoke-vmm")
    jail = not a.no_jail and os.geteuid() == 0
    tmp = tempfile.mkdtemp(prefix="stoke-bench-snap-")
    os.chmod(tmp, 0o755)
    task = os.path.join(tmp, "task")
    store = os.path.join(tmp, "store")
    shutil.copytree(HELLO, task)
    try:
        snap, img, ws = take_snapshot(vmm, task, store, jail)
        r, mem = measure(vmm, task, jail, a.runs, snap, img, ws, store)
    finally:
        shutil.rmtree(tmp)
    res = {"runs": a.runs, "jail": jail, "function": "examples/hello-py",
           "first_response_ms": {k: summary(v) for k, v in r.items()},
           "private_kb_idle_vm": {k: {"p50": vmrun.pct(v, 50), "max": max(v)}
                                  for k, v in mem.items()}}
    print("%-14s %6s %9s %9s %9s" % ("variant", "n", "p50 ms", "p99 ms", "min ms"))
    for k, s in res["first_response_ms"].items():
        print("%-14s %6d %9.2f %9.2f %9.2f" % (k, s["n"], s["p50"], s["p99"], s["min"]))
    for k, s in res["private_kb_idle_vm"].items():
        print("private memory, idle %s VM: p50 %.1f MiB" % (k, s["p50"] / 1024))
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/snapshot_restore.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

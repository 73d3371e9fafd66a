#!/usr/bin/env python3
"""bench/vm/density.py: how many idle restored Python VMs fit in a GiB of host memory.

Snapshots examples/hello-py (as bench/vm/snapshot.py does), then starts VMs from it the
way the VM tier does (stoke-vmm jailed, one cgroup per VM, restored with the working set
prefetched), sends each one request and leaves it idle, until the VMs have taken
--max-gib of host memory, --max-vms are up, or something else stops it:

  memory     the VMs use --max-gib (host MemAvailable at the start minus now)
  floor      MemAvailable fell under --floor-gib (default 4: the machine is shared)
  max-vms    --max-vms VMs are up
  fds        this process ran out of descriptors (one channel socket per VM)
  pids       fewer than --pid-margin process ids left below pid_max (each VM is a
             supervisor and a VMM process with two threads)
  kvm        a VMM could not create its VM (its message is in the stderr log)
  vm-failed  a VM failed another way (its message is in the stderr log)
  time       --max-seconds passed

"Host memory used" counts everything the VMs add: their processes, page tables, KVM's
kernel memory, namespaces, cgroups (MemAvailable before minus after, not RSS). Other
work on the machine moves MemAvailable too, so the /proc/meminfo breakdown and a sample
of per-VM process and cgroup figures are printed beside it. The VMs are then stopped
(only those started here, by PID) and the memory given back is measured.

Variants: default an idle VM after its first request (restored as the tier's spawn
path does); --shells parks VMs as the tier's pre-created shells (restored, working set
touched, waiting for their first request); --huge restores hot regions into huge pages.

Prints a table and writes bench/results/density.json.

usage: bench/vm/density.py [--max-gib G] [--max-vms N] [--floor-gib G] [--shells|--huge]
                           [--batch N] [--max-seconds S] [--quick] [--build DIR] [--no-jail]
"""
import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as vmrun  # noqa: E402  (frames, requests, percentiles)
import snapshot as snapbench  # noqa: E402  (snapshot taking, spawning, memory figures)

ROOT = vmrun.ROOT
GIB = 1 << 30
MEMINFO_KEYS = ("AnonPages", "PageTables", "SecPageTables", "KernelStack", "Slab",
                "SUnreclaim", "Percpu", "Shmem", "Cached", "VmallocUsed")


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def free_pids():
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    with open("/proc/loadavg") as f:
        tasks = int(f.read().split()[3].split("/")[1])
    return pid_max - tasks


class Fleet:
    """The VMs started here: (supervisor Popen, channel socket), stopped only by PID."""

    def __init__(self, vmm, task, jail, extra, errlog):
        self.vmm, self.task, self.jail, self.extra = vmm, task, jail, extra
        self.errlog = errlog
        self.vms = []
        self.first_ms = []

    def start_batch(self, n, shells):
        """Starts n VMs; returns None, or the name of the limit that stopped a start."""
        started = []
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                proc, sock, chan = snapbench.spawn(self.vmm, self.task, self.jail, self.extra,
                                                   stderr=self.errlog)
            except OSError as e:
                return "fds" if e.errno in (24, 23) else "pids" if e.errno == 11 else \
                    "spawn: " + str(e)
            self.vms.append((proc, sock))
            started.append((proc, sock, chan, t0))
        for proc, sock, chan, t0 in started:
            try:
                if shells:
                    snapbench.wait_parked(snapbench.vmm_pid(proc, self.jail), chan)
                else:
                    vmrun.request(sock)
            except (OSError, RuntimeError):
                return self.why_failed()
            self.first_ms.append((time.perf_counter() - t0) * 1e3)
        return None

    def why_failed(self):
        self.errlog.flush()
        with open(self.errlog.name, errors="replace") as f:
            text = f.read()[-4000:]
        return "kvm" if "creating the VM" in text else "vm-failed"

    def sample(self, every):
        """Process and cgroup memory of every every-th VM (bytes, per VM)."""
        procs, cgroups = [], []
        for proc, _ in self.vms[::every]:
            try:
                kb = snapbench.unshared_kb(proc.pid, self.jail)
            except (OSError, RuntimeError):
                continue
            procs.append(kb * 1024)
            cg = snapbench.cgroup_bytes(proc.pid)
            if cg is not None:
                cgroups.append(cg)
        return procs, cgroups

    def stop(self, batch=100):
        """Stops the VMs batch by batch (thousands exiting at once load the shared
        machine for minutes): closes their channels (an idle guest exits on EOF), then
        SIGTERM and SIGKILL by PID to those that do not go within 10 s."""
        while self.vms:
            some, self.vms = self.vms[:batch], self.vms[batch:]
            for _, sock in some:
                sock.close()
            deadline = time.monotonic() + 10
            for proc, _ in some:
                try:
                    proc.wait(timeout=max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGTERM)
            for proc, _ in some:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def grow(fleet, a, base):
    """Starts VMs batch by batch until a limit; returns (why it stopped, seconds)."""
    t0 = time.monotonic()
    while True:
        now = meminfo()
        used = base["MemAvailable"] - now["MemAvailable"]
        n = len(fleet.vms)
        if used >= a.max_gib * GIB:
            return "memory", time.monotonic() - t0
        if now["MemAvailable"] < a.floor_gib * GIB:
            return "floor", time.monotonic() - t0
        if n >= a.max_vms:
            return "max-vms", time.monotonic() - t0
        if free_pids() < a.pid_margin:
            return "pids", time.monotonic() - t0
        if time.monotonic() - t0 > a.max_seconds:
            return "time", time.monotonic() - t0
        # Never step past the floor: a batch is sized by what one VM took so far.
        per_vm = used / n if n and used > 0 else 64 << 20
        room = (now["MemAvailable"] - a.floor_gib * GIB) / per_vm
        batch = int(max(1, min(a.batch, a.max_vms - n, room)))
        why = fleet.start_batch(batch, a.shells)
        if why:
            return why, time.monotonic() - t0
        if n // 500 != len(fleet.vms) // 500:
            print("  %d VMs, %.2f GiB used" % (len(fleet.vms), used / GIB), flush=True)


def settle(limit_s=30):
    """Waits until MemAvailable stops rising (namespaces and cgroups are freed after
    their processes exit), at most limit_s."""
    last = meminfo()["MemAvailable"]
    for _ in range(int(limit_s)):
        time.sleep(1)
        now = meminfo()["MemAvailable"]
        if now - last < (16 << 20):
            return
        last = now


def options():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-gib", type=float, default=16)
    ap.add_argument("--max-vms", type=int, default=100000)
    ap.add_argument("--floor-gib", type=float, default=4)
    ap.add_argument("--pid-margin", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=1800)
    ap.add_argument("--shells", action="store_true")
    ap.add_argument("--huge", action="store_true")
    ap.add_argument("--quick", action="store_true", help="--max-gib 0.5 --max-vms 150")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--no-jail", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/density.json"))
    a = ap.parse_args()
    if a.quick:
        a.max_gib, a.max_vms = min(a.max_gib, 0.5), min(a.max_vms, 150)
    return a


def variant_args(a, snap, ws, store):
    extra = ["--restore", snap, "--snap-store", store, "--snap-ws", ws]
    if a.shells:
        extra.append("--snap-touch")
    if a.huge:
        extra.append("--snap-huge")
    return extra


def report(a, jail, why, secs, base, peak, after, fleet_n, first_ms, sample):
    used = base["MemAvailable"] - peak["MemAvailable"]
    back = after["MemAvailable"] - peak["MemAvailable"]
    per_vm = used / fleet_n if fleet_n else 0
    procs, cgroups = sample
    res = {
        "variant": "shell" if a.shells else "huge" if a.huge else "idle_after_request",
        "jail": jail, "function": "examples/hello-py", "vms": fleet_n, "stopped_by": why,
        "seconds": round(secs, 1), "host_used_gib": used / GIB,
        "vms_per_gib": fleet_n / (used / GIB) if used > 0 else None,
        "mib_per_vm": per_vm / (1 << 20),
        "returned_gib_after_stop": back / GIB,
        "meminfo_mib_per_vm": {k: (peak[k] - base[k]) / (1 << 20) / fleet_n
                               for k in MEMINFO_KEYS if k in base and fleet_n},
        "sampled_unshared_process_mib": vmrun.pct(procs, 50) / (1 << 20) if procs else None,
        "sampled_cgroup_mib": vmrun.pct(cgroups, 50) / (1 << 20) if cgroups else None,
        "start_to_ready_ms": snapbench.summary(first_ms) if first_ms else None,
        "target": {"vms_per_gib": 100},
    }
    print("%-42s %s" % ("variant", res["variant"]))
    print("%-42s %d (stopped by: %s, %.0f s)" % ("idle VMs", fleet_n, why, secs))
    print("%-42s %.2f GiB (MemAvailable %.2f -> %.2f GiB)" % (
        "host memory used", used / GIB, base["MemAvailable"] / GIB, peak["MemAvailable"] / GIB))
    if res["vms_per_gib"]:
        print("%-42s %.0f (target >= 100); %.2f MiB per VM" % (
            "VMs per GiB", res["vms_per_gib"], res["mib_per_vm"]))
    for k, v in res["meminfo_mib_per_vm"].items():
        print("  %-40s %7.3f MiB per VM" % ("meminfo " + k, v))
    for k in ("sampled_unshared_process_mib", "sampled_cgroup_mib"):
        if res[k] is not None:
            print("  %-40s %7.3f MiB (p50 of a sample)" % (k.replace("_", " "), res[k]))
    if first_ms:
        s = res["start_to_ready_ms"]
        print("%-42s p50 %.1f ms, p99 %.1f ms" % ("spawn to ready (per VM)", s["p50"], s["p99"]))
    print("%-42s %.2f GiB" % ("given back after stopping them", back / GIB))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


def main():
    a = options()
    vmm = os.path.join(a.build, "src/vmm/stoke-vmm")
    jail = not a.no_jail and os.geteuid() == 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="stoke-bench-density-")
    os.chmod(tmp, 0o755)
    task = os.path.join(tmp, "task")
    store = os.path.join(tmp, "store")
    shutil.copytree(snapbench.HELLO, task)
    errlog = open(os.path.join(tmp, "vms.stderr"), "w")
    fleet = None
    try:
        snap, _, ws = snapbench.take_snapshot(vmm, task, store, jail)
        extra = variant_args(a, snap, ws, store) + (["--cgroup=auto"] if jail else [])
        fleet = Fleet(vmm, task, jail, extra, errlog)
        fleet.start_batch(1, a.shells)  # the image and the VMM binary now cached
        fleet.stop()
        fleet.first_ms = []
        time.sleep(1)
        base = meminfo()
        why, secs = grow(fleet, a, base)
        time.sleep(1)
        peak = meminfo()
        n, first_ms = len(fleet.vms), fleet.first_ms
        sample = fleet.sample(max(1, n // 50))
        fleet.stop()
        settle()
        report(a, jail, why, secs, base, peak, meminfo(), n, first_ms, sample)
    finally:
        if fleet:
            fleet.stop()
        errlog.close()
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

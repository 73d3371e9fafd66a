#!/usr/bin/env python3
"""bench/vm: the micro-VM tier without snapshots.

Measures, driving build/src/vmm/stoke-vmm directly over the channel (docs/channel-abi.md):
  boot       spawn stoke-vmm -> python3 boots -> first response (p50/p99 over --runs),
             also without the vDSO (STOKE_VMM_NO_VDSO=1), interleaved, a third as often
  warm       a request on an already warm VM (p50/p99)
  syscall    system-call round trip: a static program doing getppid in a loop
  memory     host memory per idle warm Python VM (RSS of the stoke-vmm process tree),
             and the VMM's own overhead (RSS of a VM whose guest is a tiny static program)
Prints a table and writes bench/results/vm.json.

usage: bench/vm/run.py [--runs N] [--build DIR] [--no-jail]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ROOTFS = os.path.expanduser("~/.cache/stoke/rootfs/python3")
HANDLER = "def handler(event, context):\n    return {'statusCode': 200, 'body': 'ok'}\n"
SYSCALL_PROG = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
	struct timespec a, b;
	int n = 2000;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < n; i++) syscall(SYS_getppid);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1e3);
	return 0;
}
"""


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def frame(payload, ftype=1):
    return len(payload).to_bytes(4, "little") + bytes([ftype, 1, 0, 0]) + payload


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("VM closed the channel")
        data += chunk
    return data


def request(sock):
    """Sends one request; returns the guest's system-call count from the VMM's stats."""
    sock.sendall(frame(json.dumps({"method": "GET", "path": "/", "query": "",
                                   "headers": [], "body": "", "request_id": "b"}).encode()))
    syscalls = None
    while True:
        hdr = recv_exact(sock, 8)
        payload = recv_exact(sock, int.from_bytes(hdr[:4], "little"))
        if hdr[4] == 3:
            syscalls = json.loads(payload)["syscalls"]
        if hdr[4] == 2:
            return syscalls


def start_vm(vmm, task, jail, native=None, env=None):
    ours, theirs = socket.socketpair()
    args = [vmm, "--channel-fd", str(theirs.fileno()), "--task", task, "--mem-mb", "256"]
    if not jail:
        args.append("--no-jail")
    if native:
        args += ["--rootfs", task, "--", "/var/task/" + native]
    else:
        args += ["--rootfs", ROOTFS, "--runtime", os.path.join(ROOT, "runtimes/python3"),
                 "--env", "STOKE_ENTRY=handler.py",
                 "--", "/usr/bin/python3", "-S", "/var/runtime/bootstrap.py"]
    proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], env=env)
    theirs.close()
    return proc, ours


def rss_kb(pid):
    """RSS of pid and its children (the jail's supervisor has the VMM as its child)."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def bench_boot(vmm, task, runs, jail, env=None):
    boots, warms, rss = [], [], []
    syscalls = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc, sock = start_vm(vmm, task, jail, env=env)
        syscalls = request(sock)
        boots.append((time.perf_counter() - t0) * 1e3)
        for _ in range(5):
            t1 = time.perf_counter()
            request(sock)
            warms.append((time.perf_counter() - t1) * 1e3)
        rss.append(rss_kb(proc.pid))
        sock.close()
        proc.wait(timeout=30)
    return boots, warms, rss, syscalls


def bench_overhead(vmm, jail):
    """RSS of a VM whose guest is hello-c, idle on the channel: the VMM's own cost."""
    d = tempfile.mkdtemp(prefix="stoke-bench-")
    os.chmod(d, 0o755)
    try:
        subprocess.run(["cc", "-O2", "-static", "-o", os.path.join(d, "hello"),
                        os.path.join(ROOT, "examples/hello-c/hello.c")], check=True)
        proc, sock = start_vm(vmm, d, jail, native="hello")
        request(sock)
        kb = rss_kb(proc.pid)
        sock.close()
        proc.wait(timeout=30)
        return kb / 1024
    finally:
        shutil.rmtree(d)


def bench_syscall(vmm, build):
    d = tempfile.mkdtemp(prefix="stoke-bench-")
    os.chmod(d, 0o755)
    try:
        src = os.path.join(d, "s.c")
        with open(src, "w") as f:
            f.write(SYSCALL_PROG)
        subprocess.run(["cc", "-O2", "-static", "-o", os.path.join(d, "s"), src], check=True)
        vm = subprocess.run([vmm, "--rootfs", d, "--", "/s"], capture_output=True, text=True,
                            timeout=60)
        native = subprocess.run([os.path.join(d, "s")], capture_output=True, text=True)
        return float(vm.stdout), float(native.stdout)
    finally:
        shutil.rmtree(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--no-jail", action="store_true")
    a = ap.parse_args()
    vmm = os.path.join(a.build, "src/vmm/stoke-vmm")
    task = tempfile.mkdtemp(prefix="stoke-bench-task-")
    os.chmod(task, 0o755)
    with open(os.path.join(task, "handler.py"), "w") as f:
        f.write(HANDLER)
    jail = not a.no_jail and os.geteuid() == 0
    try:
        # Interleaved, so both variants see the same background load.
        boots, warms, rss, plain = [], [], [], []
        no_vdso = dict(os.environ, STOKE_VMM_NO_VDSO="1")
        for i in range(a.runs):
            b, w, r, boot_syscalls = bench_boot(vmm, task, 1, jail)
            boots += b
            warms += w
            rss += r
            if i % 3 == 0:
                b, _, _, plain_syscalls = bench_boot(vmm, task, 1, jail, no_vdso)
                plain += b
    finally:
        shutil.rmtree(task)
    sys_vm, sys_native = bench_syscall(vmm, a.build)
    overhead = bench_overhead(vmm, jail)
    res = {
        "runs": a.runs, "jail": jail,
        "boot_to_first_response_ms": {"p50": pct(boots, 50), "p99": pct(boots, 99),
                                      "min": min(boots), "max": max(boots)},
        "warm_request_ms": {"p50": pct(warms, 50), "p99": pct(warms, 99)},
        "syscall_round_trip_us": {"vm": sys_vm, "native": sys_native},
        "rss_per_warm_python_vm_mb": {"p50": pct(rss, 50) / 1024, "max": max(rss) / 1024},
        "vmm_overhead_rss_mb": overhead,
        "boot_without_vdso_ms": {"p50": pct(plain, 50), "p99": pct(plain, 99),
                                 "syscalls": plain_syscalls},
        "guest_syscalls_to_first_response": boot_syscalls,
    }
    print(f"{'metric':40} {'p50':>10} {'p99':>10}")
    print(f"{'boot to first response (ms)':40} {pct(boots, 50):10.1f} {pct(boots, 99):10.1f}")
    print(f"{'warm request (ms)':40} {pct(warms, 50):10.2f} {pct(warms, 99):10.2f}")
    print(f"{'  the same without the vDSO (ms)':40} {pct(plain, 50):10.1f} {pct(plain, 99):10.1f}")
    print(f"{'guest system calls to first response':40} {boot_syscalls:10d}")
    print(f"{'  the same without the vDSO':40} {plain_syscalls:10d}")
    print(f"{'syscall round trip, VM (us)':40} {sys_vm:10.1f}")
    print(f"{'syscall round trip, native (us)':40} {sys_native:10.2f}")
    print(f"{'RSS per warm Python VM (MiB)':40} {pct(rss, 50) / 1024:10.1f} "
          f"{max(rss) / 1024:10.1f}")
    print(f"{'VMM overhead RSS, idle native VM (MiB)':40} {overhead:10.1f}")
    out = os.path.join(ROOT, "bench/results/vm.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    print("wrote", out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Inspects a running jailed stoke-vmm from outside: unprivileged user, no_new_privs,
seccomp filter, own mount/PID/network namespaces, a root holding nothing but the
guest's /tmp, and a cgroup with a memory limit.

usage: jail_check.py STOKE_VMM HELLO_C   (HELLO_C: the static examples/hello-c binary)
Exit 77 (skip) without /dev/kvm or root.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile

failures = []


def check(name, ok, detail=""):
    print("%s: %s %s" % (name, "ok" if ok else "FAIL", detail))
    if not ok:
        failures.append(name)


def status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def inspect(child):
    st = status(child)
    check("uid nobody", st["Uid"][0] == "65534" and st["Uid"][2] == "65534", st["Uid"])
    check("no capabilities", int(st["CapEff"][0], 16) == 0, st["CapEff"])
    check("no_new_privs", st["NoNewPrivs"][0] == "1")
    check("seccomp filter", st["Seccomp"][0] == "2")
    for ns in ("mnt", "pid", "net", "ipc", "uts"):
        ours = os.readlink("/proc/self/ns/" + ns)
        check("own %s namespace" % ns, os.readlink("/proc/%d/ns/%s" % (child, ns)) != ours)
    root = sorted(os.listdir("/proc/%d/root" % child))
    check("root holds only tmp", root == ["tmp"], root)
    with open("/proc/%d/cgroup" % child) as f:
        cg = f.read()
    check("in a stoke cgroup", "stoke-vm-" in cg, cg.strip().replace("\n", " | "))


def main():
    vmm, hello = sys.argv[1:3]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or os.geteuid() != 0:
        print("skipped: needs /dev/kvm and root")
        return 77
    task = tempfile.mkdtemp(prefix="stoke-jailcheck-")
    os.chmod(task, 0o755)
    shutil.copy(hello, os.path.join(task, "hello"))
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([vmm, "--cgroup=auto", "--channel-fd", str(theirs.fileno()),
                             "--rootfs", task, "--task", task, "--", "/var/task/hello"],
                            pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        req = b'{"method":"GET"}'
        ours.sendall(len(req).to_bytes(4, "little") + bytes([1, 1, 0, 0]) + req)
        ours.settimeout(20)
        ours.recv(8)	# the VM is up and serving
        with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)) as f:
            child = int(f.read().split()[0])
        inspect(child)
    finally:
        ours.close()
        proc.wait(timeout=20)
        shutil.rmtree(task)
    check("cgroup removed", not any(d.startswith("stoke-vm-%d" % proc.pid)
                                    for d in os.listdir("/sys/fs/cgroup/memory")
                                    if os.path.isdir("/sys/fs/cgroup/memory")))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

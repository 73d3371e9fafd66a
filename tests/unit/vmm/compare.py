#!/usr/bin/env python3
"""Runs a static test program natively and inside stoke-vmm; their outputs must match.

usage: compare.py STOKE_VMM BUILD_DIR PROGRAM [--rootfs DIR]
The jail program runs only in the VM, in a root holding a symlink to the host's /etc,
and every line must say "blocked". The elf programs get arguments and an environment
variable, and must exit 3 both ways. With --rootfs the program runs in that root file
system (for dynamically linked programs). Exit 77 (skip) without /dev/kvm or the root.
"""
import os
import shutil
import subprocess
import sys
import tempfile


ARGS = ["one", "two words", ""]
ENV = "STOKE_T=yes"


def run_vm(vmm, build, prog, rootfs):
    """Runs the program in a VM: in rootfs (mounted at /) with the program at /var/task,
    or alone in a fresh root."""
    extra = ARGS if prog.startswith("vmprog_elf") else []
    root = tempfile.mkdtemp(prefix="stoke-vmprog-")
    os.chmod(root, 0o755)
    try:
        shutil.copy(os.path.join(build, prog), os.path.join(root, prog))
        os.symlink("/etc", os.path.join(root, "escape"))
        # The jail needs root (namespaces, cgroups, the privilege drop).
        cmd = [vmm, "--env", ENV] + (["--no-jail"] if os.geteuid() != 0 else [])
        if rootfs:
            cmd += ["--rootfs", rootfs, "--task", root, "--", "/var/task/" + prog]
        else:
            cmd += ["--rootfs", root, "--", "/" + prog]
        return subprocess.run(cmd + extra, capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(root)


def main():
    vmm, build, prog = sys.argv[1:4]
    rootfs = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--rootfs" else None
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("skipped: no /dev/kvm")
        return 77
    if rootfs and not os.path.isdir(os.path.join(rootfs, "lib")):
        print("skipped: no root file system at", rootfs)
        return 77
    expect_rc = 3 if prog.startswith("vmprog_elf") else 0
    vm = run_vm(vmm, build, prog, rootfs)
    print(vm.stdout)
    if vm.returncode != expect_rc:
        print("VM exit status", vm.returncode, vm.stderr)
        return 1
    if prog.endswith("jail"):
        bad = [l for l in vm.stdout.splitlines() if not l.endswith("blocked")]
        print("\n".join(bad))
        return 1 if bad else 0
    native = subprocess.run([os.path.join(build, prog)] +
                            (ARGS if prog.startswith("vmprog_elf") else []),
                            capture_output=True, text=True, timeout=30, cwd="/",
                            env=dict(os.environ, STOKE_T="yes"))
    if native.stdout != vm.stdout:
        import difflib
        sys.stdout.writelines(difflib.unified_diff(
            native.stdout.splitlines(True), vm.stdout.splitlines(True), "native", "vm"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

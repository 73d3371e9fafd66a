#!/usr/bin/env python3
"""Runs a static test program natively and inside stoke-vmm; their outputs must match.

usage: compare.py STOKE_VMM BUILD_DIR PROGRAM
The jail program runs only in the VM, in a root holding a symlink to the host's /etc,
and every line must say "blocked". Exit 77 (skip) without /dev/kvm.
"""
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    vmm, build, prog = sys.argv[1:4]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("skipped: no /dev/kvm")
        return 77
    root = tempfile.mkdtemp(prefix="stoke-vmprog-")
    os.chmod(root, 0o755)
    try:
        shutil.copy(os.path.join(build, prog), os.path.join(root, prog))
        os.symlink("/etc", os.path.join(root, "escape"))
        vm = subprocess.run([vmm, "--rootfs", root, "--", "/" + prog],
                            capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(root)
    print(vm.stdout)
    if vm.returncode != 0:
        print("VM exit status", vm.returncode, vm.stderr)
        return 1
    if prog.endswith("jail"):
        bad = [l for l in vm.stdout.splitlines() if not l.endswith("blocked")]
        print("\n".join(bad))
        return 1 if bad else 0
    native = subprocess.run([os.path.join(build, prog)], capture_output=True, text=True,
                            timeout=30, cwd="/")
    if native.stdout != vm.stdout:
        import difflib
        sys.stdout.writelines(difflib.unified_diff(
            native.stdout.splitlines(True), vm.stdout.splitlines(True), "native", "vm"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

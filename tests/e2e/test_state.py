"""Kept state (`state: keep`) end to end, plus the VM concurrency rule and peak memory
in metering: a stateful Python function's module globals survive across requests, an
idle instance is saved to disk and restored with its state, X-Stoke-Key picks the
instance, a new version or rm starts fresh, a damaged saved state is a clear error
followed by a fresh start, and usage shows peak memory (docs/state.md)."""
import concurrent.futures
import os
import time

from harness import Daemon, Skip, kvm_usable

ROOTFS = os.path.join(os.environ.get("STOKE_CACHE", os.path.expanduser("~/.cache/stoke")),
                      "rootfs", "python3")

COUNTER = """
import os, time
count = {"n": 0}
pid = os.getpid()
blob = bytearray(8 << 20)          # 8 MiB the VM keeps resident
def handler(event, context):
    count["n"] += 1
    if event["path"] == "/slow":
        time.sleep(0.3)
    if event["path"] == "/tmpfile":
        open("/tmp/x", "w").write("x")
    return {"n": count["n"], "key": event["headers"].get("x-stoke-key", "")}
"""

MANIFEST = {"tier": "vm", "runtime": "python3", "entry": "handler.py", "state": "keep"}


def need_vm():
    if not kvm_usable():
        raise Skip("no usable /dev/kvm")
    if not os.path.exists(os.path.join(ROOTFS, "usr/bin/python3")):
        raise Skip("no python3 root file system (run scripts/setup)")


def metric(d, name):
    for line in d.request("GET", "/_stoke/metrics", auth=True).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def count(d, name, key=None, path="/"):
    r = d.invoke(name, path, headers={"X-Stoke-Key": key} if key is not None else None)
    assert r.status == 200, (r, d.logs()[-3000:])
    return r.json()["n"]


def wait_for(what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = what()
        if v:
            return v
        time.sleep(0.2)
    return what()


def deploy(d, name, expect=201, **extra):
    m = dict(MANIFEST, name=name, **extra)
    return d.deploy_files(name, {"handler.py": COUNTER}, m, expect=expect)


def state_dir(d, name):
    return os.path.join(d.data_dir, "vm-state", name)


def snap_files(d, name):
    out = []
    for root, _, files in os.walk(state_dir(d, name)):
        out += [os.path.join(root, f) for f in files if f.endswith(".snap")]
    return out


def test_state_survives_requests_and_idle_snapshot(d):
    need_vm()
    with Daemon(env={"STOKE_VM_IDLE_TTL_S": "1"}) as sd:
        deploy(sd, "counter")
        assert [count(sd, "counter") for _ in range(3)] == [1, 2, 3]
        # Idle past the TTL: the instance is saved to disk and its VM stopped.
        assert wait_for(lambda: metric(sd, "stoke_vm_state_saves_total") >= 1), sd.logs()
        assert wait_for(lambda: metric(sd, "stoke_vm_live") == 0), sd.logs()
        assert len(snap_files(sd, "counter")) == 1
        assert count(sd, "counter") == 4
        assert metric(sd, "stoke_vm_state_restores_total") == 1
        # Twice more round the cycle: each save replaces the last one.
        for want in (5, 6):
            saves = metric(sd, "stoke_vm_state_saves_total")
            assert wait_for(lambda: metric(sd, "stoke_vm_state_saves_total") > saves)
            assert count(sd, "counter") == want
        assert metric(sd, "stoke_vm_state_restores_total") == 3
        logs = sd.cli("logs", "counter").stdout
        assert "state saved" in logs and "state restored" in logs, logs

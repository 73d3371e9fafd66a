"""Micro-VM snapshots end to end: stoke-vmm dumps a python3 VM at its first channel read,
the dump becomes a snapshot, and fresh VMs restore from it (docs/snapshots.md). Part of
the tests drive stoke-vmm directly over a socketpair; the rest run the daemon with
STOKE_VM_SNAPSHOTS=1 and talk HTTP."""
import concurrent.futures
import hashlib
import json
import mmap
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

from harness import BUILD, ROOT, Daemon, Skip, kvm_usable

VMM = os.path.join(BUILD, "src", "vmm", "stoke-vmm")
ROOTFS = os.path.join(os.environ.get("STOKE_CACHE", os.path.expanduser("~/.cache/stoke")),
                      "rootfs", "python3")
RUNTIME = os.path.join(ROOT, "runtimes", "python3")

# Module state is computed at import, before the snapshot; requests continue from it.
HANDLER = """
import hashlib, json, os, random, sys, time, uuid
chain = hashlib.sha256(b"start")
for i in range(5000):
    chain.update(str(i).encode())
blob = bytes(random.Random(7).getrandbits(8) for _ in range(200000))
state = {"n": 0, "hooks": []}
def before_snapshot():
    state["hooks"].append("before")
def after_restore():
    state["hooks"].append("after")
def handler(event, context):
    state["n"] += 1
    chain.update(b"request")
    if event["path"] == "/sleep":
        time.sleep(0.4)
    return {"n": state["n"], "chain": chain.hexdigest(),
            "blob": hashlib.sha256(blob).hexdigest(), "hooks": state["hooks"],
            "random": random.random(), "urandom": os.urandom(16).hex(),
            "uuid": str(uuid.uuid4()), "time": time.time()}
"""


def need_vm():
    if not kvm_usable():
        raise Skip("no usable /dev/kvm")
    if not os.path.exists(os.path.join(ROOTFS, "usr/bin/python3")):
        raise Skip("no python3 root file system (run scripts/setup)")


def function_args(task, extra, mem_mb=256):
    return (["--rootfs=" + ROOTFS, "--task=" + task, "--runtime=" + RUNTIME,
             "--mem-mb=%d" % mem_mb, "--env=STOKE_CHANNEL_FD=3",
             "--env=STOKE_ENTRY=handler.py", "--env=STOKE_SNAPSHOT=1"] + list(extra) +
            ["--", "/usr/bin/python3", "-S", "/var/runtime/bootstrap.py"])


class Vmm:
    """One stoke-vmm process running the handler above, its channel a socketpair. With
    shell=True it starts as a generic shell (--shell) and gets the rest by launch()."""

    def __init__(self, task, *extra, jail=False, shell=False):
        mine, theirs = socket.socketpair()
        args = [VMM, "--channel-fd=%d" % theirs.fileno()] + ([] if jail else ["--no-jail"])
        args += ["--shell", "--mem-mb=256"] + list(extra) if shell else \
            function_args(task, extra)
        self.proc = subprocess.Popen(args, pass_fds=(theirs.fileno(),),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        theirs.close()
        self.sock = mine
        self.sock.settimeout(30)

    def launch(self, task, *extra, mem_mb=256):
        payload = b"".join(a.encode() + b"\0" for a in function_args(task, extra, mem_mb))
        self.sock.sendall(struct.pack("<IBBH", len(payload), 4, 1, 0) + payload)

    def invoke(self, path="/"):
        payload = json.dumps({"request_id": "t", "method": "GET", "path": path,
                              "headers": [], "body": ""}).encode()
        self.sock.sendall(struct.pack("<IBBH", len(payload), 1, 1, 0) + payload)
        while True:
            n, ftype = struct.unpack("<IB3x", self._read(8))
            body = self._read(n)
            if ftype == 2:
                return json.loads(json.loads(body)["body"])

    def _read(self, n):
        out = b""
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise EOFError("VM closed the channel: " + self.close())
            out += got
        return out

    def close(self):
        self.sock.close()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode("utf-8", "replace")


class Snapshot:
    """A task directory, a page store and one snapshot of the handler taken in it."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="stoke-snap-")
        self.task = os.path.join(self.tmp.name, "task")
        self.store = os.path.join(self.tmp.name, "store")
        self.dump = os.path.join(self.tmp.name, "vm.dump")
        self.file = os.path.join(self.tmp.name, "vm.snap")
        os.makedirs(self.task)
        with open(os.path.join(self.task, "handler.py"), "w") as f:
            f.write(HANDLER)
        vm = Vmm(self.task, "--snapshot-dump=" + self.dump)
        self.original = [vm.invoke(), vm.invoke()]
        vm.close()
        subprocess.run([VMM, "--build-snapshot", self.dump, self.store, self.file],
                       check=True, capture_output=True)

    def restore(self, *extra, jail=False):
        return Vmm(self.task, "--restore=" + self.file, "--snap-store=" + self.store,
                   *extra, jail=jail)

    def image(self):
        images = [f for f in os.listdir(os.path.join(self.store, "images"))
                  if f.endswith(".img")]
        assert len(images) == 1, images
        return os.path.join(self.store, "images", images[0])


_snap = None


def snapshot():
    global _snap
    if _snap is None:
        _snap = Snapshot()
    return _snap


def test_restore_continues_the_computation(d):
    need_vm()
    s = snapshot()
    vm = s.restore()
    got = [vm.invoke(), vm.invoke()]
    vm.close()
    for a, b in zip(s.original, got):
        assert (a["n"], a["chain"], a["blob"]) == (b["n"], b["chain"], b["blob"]), (a, b)
    assert got[0]["hooks"] == ["before", "after"], got[0]


def test_restored_memory_equals_the_original(d):
    need_vm()
    s = snapshot()
    with open(s.dump, "rb") as f:
        # struct vmsnap_dump_hdr: magic, version, reserved, mem_bytes, ..., mem_off
        hdr = f.read(80)
        mem_bytes, mem_off = struct.unpack_from("<Q", hdr, 16)[0], struct.unpack_from(
            "<Q", hdr, 72)[0]
        dump = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    with open(s.image(), "rb") as f:
        img = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert len(img) == mem_bytes
    step = 1 << 20
    for off in range(0, mem_bytes, step):
        assert dump[mem_off + off:mem_off + off + step] == img[off:off + step], off


def test_restored_vms_differ_in_randomness(d):
    need_vm()
    s = snapshot()
    seen = []
    for _ in range(2):
        vm = s.restore()
        seen.append(vm.invoke())
        vm.close()
    a, b = seen
    assert a["uuid"] != b["uuid"] and a["urandom"] != b["urandom"], seen
    assert a["random"] != b["random"], seen
    assert a["chain"] == b["chain"], seen


def test_wall_clock_is_right_after_restore(d):
    need_vm()
    s = snapshot()
    time.sleep(1.5)
    vm = s.restore()
    got = vm.invoke()
    vm.close()
    assert abs(got["time"] - time.time()) < 1.0, (got["time"], time.time())


def test_restore_in_the_jail(d):
    need_vm()
    if os.geteuid() != 0:
        raise Skip("the jail needs root")
    s = snapshot()
    vm = s.restore("--cgroup=auto", jail=True)
    got = vm.invoke()
    vm.close()
    assert got["chain"] == s.original[0]["chain"]


def corrupt_copies(s, dir):
    data = open(s.file, "rb").read()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xff
    version = bytearray(data)
    version[8] = 2
    cases = {"flipped": bytes(flipped), "truncated": data[:len(data) // 3],
             "version": bytes(version), "empty": b""}
    for name, content in cases.items():
        path = os.path.join(dir, name + ".snap")
        with open(path, "wb") as f:
            f.write(content)
        yield name, path


def test_corrupt_snapshot_boots_instead(d):
    need_vm()
    s = snapshot()
    reasons = {"flipped": "checksum", "truncated": "", "version": "version", "empty": ""}
    for name, path in corrupt_copies(s, s.tmp.name):
        vm = Vmm(s.task, "--restore=" + path, "--snap-store=" + s.store)
        got = vm.invoke()
        err = vm.close()
        assert got["n"] == 1 and got["chain"] == s.original[0]["chain"], (name, got)
        assert "booting instead" in err and reasons[name] in err, (name, err)


def record_ws(s, name):
    """Restores once recording the working set, commits it; returns its store path."""
    raw = os.path.join(s.tmp.name, name)
    vm = s.restore("--ws-out=" + raw)
    vm.invoke()
    vm.close()
    subprocess.run([VMM, "--commit-ws", raw, s.store], check=True, capture_output=True)
    return s.image()[:-4] + ".ws"


def test_working_set_is_recorded_and_prefetched(d):
    need_vm()
    s = snapshot()
    ws = record_ws(s, "ws.raw")
    assert os.path.getsize(ws) > 64
    vm = s.restore("--snap-ws=" + ws)
    assert vm.invoke()["chain"] == s.original[0]["chain"]
    vm.close()
    # Format 2: the pages the VM wrote follow the touched ones (count at offset 56).
    with open(ws, "rb") as f:
        head = f.read(64)
    assert struct.unpack_from("<I", head, 8)[0] == 2
    assert struct.unpack_from("<I", head, 56)[0] > 0, "no written pages recorded"
    # The guest's own accessed bits narrow it to what the guest touched (about 940
    # pages here); the host's page tables also hold the neighbours one fault mapped
    # with each large folio of the image (about 3,400 pages on this machine).
    assert struct.unpack_from("<Q", head, 48)[0] < 2000, struct.unpack_from("<Q", head, 48)


def test_touched_working_set_gives_the_same_results(d):
    """--snap-touch runs guest code over the working set before the request (reading
    every page, writing back the ones the VM will write): nothing may change."""
    need_vm()
    s = snapshot()
    ws = record_ws(s, "ws-touch.raw")
    jail = os.geteuid() == 0
    vm = s.restore("--snap-ws=" + ws, "--snap-touch", "--stats", jail=jail)
    got = [vm.invoke(), vm.invoke()]
    err = vm.close()
    assert "touched" in err and "working-set ranges" in err, err
    for a, b in zip(s.original, got):
        assert (a["n"], a["chain"], a["blob"]) == (b["n"], b["chain"], b["blob"]), (a, b)
    assert got[0]["hooks"] == ["before", "after"], got[0]


def test_generic_shell_restores_the_function_it_is_given(d):
    """--shell: jail and VM first, the function's command line later over the channel."""
    need_vm()
    s = snapshot()
    jail = os.geteuid() == 0
    vm = Vmm(s.task, jail=jail, shell=True)
    vm.launch(s.task, "--restore=" + s.file, "--snap-store=" + s.store)
    got = [vm.invoke(), vm.invoke()]
    vm.close()
    for a, b in zip(s.original, got):
        assert (a["n"], a["chain"], a["blob"]) == (b["n"], b["chain"], b["blob"]), (a, b)
    # A launch for another memory size does not fit the VM the shell made: refused.
    vm = Vmm(s.task, jail=jail, shell=True)
    vm.launch(s.task, "--restore=" + s.file, "--snap-store=" + s.store, mem_mb=512)
    vm.proc.wait(timeout=30)
    err = vm.close()
    assert vm.proc.returncode == 125 and "shell launch" in err, err


def metric(d, name):
    for line in d.request("GET", "/_stoke/metrics", auth=True).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_daemon_restores_python_over_http(d):
    need_vm()
    env = {"STOKE_VM_SNAPSHOTS": "1"}
    with Daemon(env=env) as sd:
        sd.deploy_files("snappy", {"handler.py": HANDLER},
                        {"name": "snappy", "tier": "vm", "runtime": "python3",
                         "entry": "handler.py"})
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            rs = list(ex.map(lambda _: sd.invoke("snappy", "/sleep"), range(4)))
        assert all(r.status == 200 for r in rs), rs
        bodies = [r.json() for r in rs]
        assert len({b["uuid"] for b in bodies}) == 4, bodies
        assert len({b["chain"] for b in bodies}) == 1, bodies
        assert metric(sd, "stoke_vm_restores_total") >= 2, sd.logs()
        assert metric(sd, "stoke_vm_boots_total") == 0, sd.logs()
        # A snapshot file damaged on disk: the VM boots and still answers.
        snaps = os.path.join(sd.data_dir, "vm-snapshots")
        for f in os.listdir(snaps):
            if f.endswith(".snap"):
                with open(os.path.join(snaps, f), "r+b") as fh:
                    fh.seek(100)
                    fh.write(b"\xff\xfe")
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            rs = list(ex.map(lambda _: sd.invoke("snappy", "/sleep"), range(6)))
        assert all(r.status == 200 for r in rs), rs


def test_daemon_parks_restored_vms_and_stops_them(d):
    need_vm()
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1"}) as sd:
        sd.deploy_files("parked", {"handler.py": HANDLER},
                        {"name": "parked", "tier": "vm", "runtime": "python3",
                         "entry": "handler.py"})
        assert sd.invoke("parked").status == 200
        # The first restore records the working set; the reaper then parks a shell.
        time.sleep(2.5)
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            rs = list(ex.map(lambda _: sd.invoke("parked", "/sleep"), range(3)))
        assert all(r.status == 200 for r in rs), rs
        assert len({r.json()["uuid"] for r in rs}) == 3, rs
        assert metric(sd, "stoke_vm_restores_total") >= 3, sd.logs()
        r = sd.admin("DELETE", "/functions/parked")
        assert r.status in (200, 204), r
        deadline = time.monotonic() + 10
        while metric(sd, "stoke_vm_live") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(sd, "stoke_vm_live") == 0, "VMs left after delete"
        store = os.path.join(sd.data_dir, "vm-snapshots", "store")

        def left():
            return os.listdir(os.path.join(store, "layers")) + [
                f for f in os.listdir(os.path.join(store, "images")) if f[0] != "."]
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left(), "layer or image kept after delete: %s" % left()


def test_daemon_restores_a_new_version_into_the_generic_shell(d):
    """A version with no warm VM and no shell of its own yet (its first request) is
    restored into the generic shell the tier parked while another version was in use."""
    need_vm()
    manifest = {"tier": "vm", "runtime": "python3", "entry": "handler.py"}
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1"}) as sd:
        sd.deploy_files("first", {"handler.py": HANDLER}, dict(manifest, name="first"))
        assert sd.invoke("first").status == 200
        time.sleep(2.5)  # the reaper parks the generic shell (it ticks every second)
        sd.deploy_files("second", {"handler.py": HANDLER}, dict(manifest, name="second"))
        r = sd.invoke("second")
        assert r.status == 200 and r.json()["n"] == 1, r
        assert metric(sd, "stoke_vm_generic_shell_starts_total") == 1, sd.logs()
        assert metric(sd, "stoke_vm_boots_total") == 0, sd.logs()


def test_guest_with_tmp_files_is_not_snapshotted(d):
    """A restored VM starts with an empty /tmp, so a guest that wrote there before its
    first read gets no snapshot: it boots, and its deploy does not wait for one."""
    need_vm()
    src = ("open('/tmp/cache', 'w').write('kept')\n"
           "def handler(event, context):\n"
           "    return open('/tmp/cache').read()\n")
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1"}) as sd:
        t0 = time.monotonic()
        sd.deploy_files("tmpful", {"handler.py": src},
                        {"name": "tmpful", "tier": "vm", "runtime": "python3",
                         "entry": "handler.py"})
        assert time.monotonic() - t0 < 10
        r = sd.invoke("tmpful")
        assert r.status == 200 and r.text == "kept", r
        assert metric(sd, "stoke_vm_boots_total") == 1
        assert metric(sd, "stoke_vm_restores_total") == 0

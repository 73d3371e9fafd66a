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

import snaptools
from harness import Daemon, Skip, kvm_usable
from snaptools import ROOTFS, VMM, Vmm, layer_entries, snap_layers, stored_pages


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


def wait_dump(path, vm):
    assert snaptools.wait_dump(path, vm.proc), "no dump: " + vm.close()


def dump_memory(path):
    """(memory as an mmap'd view of the dump file, bitmap bytes, header fields)."""
    with open(path, "rb") as f:
        hdr = f.read(128)
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    mem_bytes, = struct.unpack_from("<Q", hdr, 16)
    bm_off, bm_len, mem_off = struct.unpack_from("<QQQ", hdr, 56)
    flags, = struct.unpack_from("<I", hdr, 80)
    return m, m[bm_off:bm_off + bm_len], mem_off, mem_bytes, flags, hdr[88:120].hex()


def build(*args):
    r = subprocess.run([VMM] + list(args), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_layer_chain_restores_byte_for_byte(d):
    """base (program loaded) -> runtime (python3 waiting, no function) -> function
    (a runtime restored, the module imported): each layer holds only the pages that
    differ from its parent, each image equals the memory it was taken from, and the
    function restored from the chain computes what a booted one does."""
    need_vm()
    s = snapshot()
    tmp = tempfile.TemporaryDirectory(prefix="stoke-layers-")
    p = lambda name: os.path.join(tmp.name, name)
    store = p("store")
    vm = Vmm(None, "--snapshot-base-dump=" + p("base.dump"),
             "--snapshot-dump=" + p("rt.dump"), mode="runtime")
    wait_dump(p("rt.dump"), vm)
    vm.close()
    info = build("--build-runtime", p("base.dump"), p("rt.dump"), store, p("rt.snap"))
    rt_id, base_id = info["layers"][0]["id"], info["layers"][1]["id"]
    assert snap_layers(p("rt.snap")) == [rt_id, base_id]
    rt_entries, parent = layer_entries(store, rt_id)
    base_entries, _ = layer_entries(store, base_id)
    assert parent == base_id and rt_entries and base_entries
    # No runtime entry repeats its base's page: only differences are stored.
    assert not [g for g, pid in rt_entries.items() if base_entries.get(g) == pid]

    mem, _, off, size, _, _ = dump_memory(p("rt.dump"))
    with open(os.path.join(store, "images", rt_id + ".img"), "rb") as f:
        rt_img = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    for o in range(0, size, 1 << 20):
        assert mem[off + o:off + o + (1 << 20)] == rt_img[o:o + (1 << 20)], o

    vm = Vmm(s.task, "--restore=" + p("rt.snap"), "--snap-store=" + store,
             "--snapshot-dump=" + p("fn.dump"))
    vm.load({"STOKE_ENTRY": "handler.py", "STOKE_CHANNEL_FD": "3"})
    wait_dump(p("fn.dump"), vm)
    vm.close()
    info = build("--build-snapshot", p("fn.dump"), store, p("fn.snap"))
    fn_id = info["layers"][0]["id"]
    assert snap_layers(p("fn.snap")) == [fn_id, rt_id, base_id]
    fn_entries, parent = layer_entries(store, fn_id)
    assert parent == rt_id and 0 < len(fn_entries) < len(rt_entries) + len(base_entries)

    # The function restores from a split image: the runtime's image with the function
    # dump's pages over it, those in a file of their own (no flat image of its own).
    mem, bitmap, off, size, flags, dparent = dump_memory(p("fn.dump"))
    assert flags & 1 and dparent == rt_id
    assert not os.path.exists(os.path.join(store, "images", fn_id + ".img"))
    own, runs, top_parent, top_mem = snaptools.top_file(store, fn_id)
    assert top_parent == rt_id and top_mem == size
    # The function layer's pages, and the runtime's only in short gaps between them (4
    # pages at most, SNAP_SPLIT_GAP: fewer mmaps per restore); compared below.
    assert set(fn_entries) <= set(own), "the top file holds every page of the function layer"
    assert all(b[0] - a[0] - a[1] > 4 for a, b in zip(runs, runs[1:])), runs
    assert len(set(own) - set(fn_entries)) <= 4 * (len(runs) + len(fn_entries))
    dirty = {i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1}
    for g in range(size // 4096):
        want = mem[off + g * 4096:off + g * 4096 + 4096] if g in dirty else \
            rt_img[g * 4096:g * 4096 + 4096]
        got = own[g] if g in own else rt_img[g * 4096:g * 4096 + 4096]
        assert got == want, g

    vm = Vmm(s.task, "--restore=" + p("fn.snap"), "--snap-store=" + store)
    got = vm.invoke()
    err = vm.close()
    assert got["chain"] == s.original[0]["chain"] and got["n"] == 1, (got, err)
    assert got["blob"] == s.original[0]["blob"] and got["hooks"] == ["before", "after"], got


ZEROING = r"""
#include <sys/mman.h>
#include <unistd.h>
/* Initialized data: written by the ELF loader, so part of the base layer. */
static char data[64 * 4096] __attribute__((aligned(4096))) = { [0 ... 64 * 4096 - 1] = 7 };
int main(void)
{
	char b;
	munmap(data + 8 * 4096, 32 * 4096);	/* more than 16 pages: given back to the host */
	return read(3, &b, 1) < 0;
}
"""


def test_pages_freed_after_the_base_are_zero_in_the_runtime_layer(d):
    """Pages of the base that the program gives back (munmap: MADV_DONTNEED) are absent
    from pagemap at the next dump, like pages never touched; the runtime layer must
    still record them as zero, or a restore would show the base's bytes there."""
    if not kvm_usable():
        raise Skip("no usable /dev/kvm")
    if not shutil.which("cc"):
        raise Skip("no C compiler")
    tmp = tempfile.TemporaryDirectory(prefix="stoke-zero-")
    p = lambda name: os.path.join(tmp.name, name)
    os.makedirs(p("root"))
    with open(p("zero.c"), "w") as f:
        f.write(ZEROING)
    subprocess.run(["cc", "-static", "-O1", p("zero.c"), "-o", p("root/zero")], check=True)
    mine, theirs = socket.socketpair()
    proc = subprocess.Popen([VMM, "--rootfs=" + p("root"), "--mem-mb=64", "--no-jail",
                             "--channel-fd=%d" % theirs.fileno(),
                             "--snapshot-base-dump=" + p("base.dump"),
                             "--snapshot-dump=" + p("rt.dump"), "--", "/zero"],
                            pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
    theirs.close()

    class Proc:   # what wait_dump needs
        pass
    vm = Proc()
    vm.proc, vm.close = proc, lambda: proc.communicate(timeout=30)[1].decode()
    wait_dump(p("rt.dump"), vm)
    mine.close()
    proc.communicate(timeout=30)
    info = build("--build-runtime", p("base.dump"), p("rt.dump"), p("store"), p("rt.snap"))
    rt_id = info["layers"][0]["id"]
    entries, _ = layer_entries(p("store"), rt_id)
    zeros = [g for g, pid in entries.items() if pid == "0" * 64]
    assert len(zeros) >= 32, (len(zeros), info)
    mem, _, off, size, _, _ = dump_memory(p("rt.dump"))
    with open(os.path.join(p("store"), "images", rt_id + ".img"), "rb") as f:
        img = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    for o in range(0, size, 1 << 20):
        assert mem[off + o:off + o + (1 << 20)] == img[o:o + (1 << 20)], o


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
        snaps = os.path.join(sd.data_dir, "vm-snapshots")
        store = os.path.join(snaps, "store")
        # The runtime's chain stays for the next python3 deploy; the function's goes.
        runtime = set()
        for f in os.listdir(os.path.join(snaps, "runtimes")):
            runtime.update(snap_layers(os.path.join(snaps, "runtimes", f)))
        assert len(runtime) == 2, runtime

        def left():
            return set(os.listdir(os.path.join(store, "layers"))) - runtime | {
                f for f in os.listdir(os.path.join(store, "images"))
                if f[0] != "." and f[:64] not in runtime}
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


def metrics(d):
    out = {}
    for line in d.request("GET", "/_stoke/metrics", auth=True).text.splitlines():
        if line and line[0] != "#":
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def cache(m, kind, result):
    return m.get('stoke_snapshot_layer_cache_total{kind="%s",result="%s"}' % (kind, result))


SECOND = """
import json
table = {str(i): i * i for i in range(30000)}
def handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"second": table["77"]})}
"""


def deploy_py(sd, name, src):
    sd.deploy_files(name, {"handler.py": src}, {"name": name, "tier": "vm",
                                                "runtime": "python3", "entry": "handler.py"})


def fn_snapshot(sd, name):
    snaps = os.path.join(sd.data_dir, "vm-snapshots")
    found = [f for f in os.listdir(snaps) if f.startswith(name + ".") and f.endswith(".snap")]
    assert len(found) == 1, found
    return os.path.join(snaps, found[0])


def deploy_two_on_one_runtime(sd):
    """Functions one (HANDLER) and two (SECOND) on the python3 runtime, each answering."""
    deploy_py(sd, "one", HANDLER)
    deploy_py(sd, "two", SECOND)
    assert sd.invoke("one").json()["chain"] == snapshot().original[0]["chain"]
    assert sd.invoke("two").json() == {"second": 5929}


def test_functions_share_one_runtime_layer(d):
    """Two functions on one runtime: the runtime is built once (a miss, then a hit),
    both chains end in the same runtime and base layers, and the store holds each
    distinct page once: exactly the union of the three kinds of layers."""
    need_vm()
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1"}) as sd:
        deploy_two_on_one_runtime(sd)
        m = metrics(sd)
        assert cache(m, "runtime", "miss") == 1 and cache(m, "runtime", "hit") == 1, m
        assert cache(m, "base", "miss") == 1 and cache(m, "base", "hit") == 1, m
        assert cache(m, "function", "miss") == 2, m
        assert m["stoke_vm_boots_total"] == 0, sd.logs()
        a, b = snap_layers(fn_snapshot(sd, "one")), snap_layers(fn_snapshot(sd, "two"))
        assert len(a) == 3 and a[1:] == b[1:] and a[0] != b[0], (a, b)
        store = os.path.join(sd.data_dir, "vm-snapshots", "store")
        pages, refs = set(), 0
        for lid in set(a + b):
            entries, _ = layer_entries(store, lid)
            ids = [pid for pid in entries.values() if pid != "0" * 64]
            refs += len(ids)
            pages.update(ids)
        assert stored_pages(store) == pages
        runtime_pages = len(layer_entries(store, a[1])[0])
        fn_pages = len(layer_entries(store, a[0])[0]) + len(layer_entries(store, b[0])[0])
        assert fn_pages < runtime_pages, (fn_pages, runtime_pages)
        print("pages referenced by the three chains' layers %d, stored %d" % (refs, len(pages)))


def descendants(pid):
    """Every process below pid (VMMs, their jail supervisors), by /proc children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    kids = [int(k) for k in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def file_mappings(pid, files):
    """{path: (mapped KiB, Rss KiB, Pss KiB)} of pid's mappings of the given files,
    matched by device and inode (a jailed VMM's paths are not the host's)."""
    want = {}
    for path in files:
        st = os.stat(path)
        want[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = path
    out, cur = {}, None
    try:
        with open("/proc/%d/smaps" % pid) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            cur = want.get((major, minor, int(parts[4])))
            if cur:
                out.setdefault(cur, [0, 0, 0])
        elif cur and parts[0] in ("Size:", "Rss:", "Pss:"):
            out[cur][("Size:", "Rss:", "Pss:").index(parts[0])] += int(parts[1])
    return out


def file_frames(pid, path):
    """Physical frames (from /proc/PID/pagemap: needs root) of the present pages pid maps
    from the file at path: the same frame in two processes is one page-cache page."""
    st = os.stat(path)
    key = "%02x:%02x %d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    frames = set()
    with open("/proc/%d/maps" % pid) as f:
        ranges = [[int(x, 16) for x in line.split()[0].split("-")]
                  for line in f if " ".join(line.split()[3:5]) == key]
    with open("/proc/%d/pagemap" % pid, "rb") as pm:
        for lo, hi in ranges:
            pm.seek(lo // 4096 * 8)
            data = pm.read((hi - lo) // 4096 * 8)
            for (e,) in struct.iter_unpack("<Q", data):
                if e >> 63 and e & ((1 << 55) - 1):
                    frames.add(e & ((1 << 55) - 1))
    return frames


def test_functions_of_one_runtime_map_its_image_from_one_file(d):
    """Two different functions on one runtime, restored through the daemon: the VMs of
    both map the same runtime image file under the bulk of their guest memory (so they
    share its page-cache pages), each its own small top-layer file over it, no flat
    image of either function exists, and each answers right."""
    need_vm()
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1"}) as sd:
        deploy_two_on_one_runtime(sd)
        a, b = snap_layers(fn_snapshot(sd, "one")), snap_layers(fn_snapshot(sd, "two"))
        assert a[1:] == b[1:] and a[0] != b[0], (a, b)
        images = os.path.join(sd.data_dir, "vm-snapshots", "store", "images")
        rt_img = os.path.join(images, a[1] + ".img")
        tops = {os.path.join(images, a[0] + ".top"): "one",
                os.path.join(images, b[0] + ".top"): "two"}
        assert not [f for f in os.listdir(images) if f[:64] in (a[0], b[0]) and
                    f.endswith(".img")], os.listdir(images)
        found = {}
        for _ in range(100):   # the idle VMs stay; parked shells may still be starting
            found = {}
            for pid in descendants(sd.proc.pid):
                m = file_mappings(pid, [rt_img] + list(tops))
                for top, name in tops.items():
                    if top in m and rt_img in m:
                        found.setdefault(name, []).append(m)
            if len(found) == 2:
                break
            time.sleep(0.05)
        assert sorted(found) == ["one", "two"], found
        for name, maps in found.items():
            for m in maps:
                size, rss, pss = m[rt_img]
                top = [v for k, v in m.items() if k != rt_img][0]
                # The bulk of the 256 MiB guest is the runtime's image; the function's
                # own pages are a few percent of it.
                assert size > 200 * 1024 and top[0] < size / 8, (name, m)
        # Pages of the runtime's image mapped by VMs of both functions count once.
        shared = [m[rt_img] for maps in found.values() for m in maps]
        assert sum(pss for _, _, pss in shared) < sum(rss for _, rss, _ in shared), shared
        if os.geteuid() == 0:   # the frames themselves: one page-cache page, two VMs
            pids = {n: [p for p in descendants(sd.proc.pid)
                        if file_mappings(p, [t]) and file_mappings(p, [rt_img])]
                    for t, n in tops.items()}
            one = set().union(*(file_frames(p, rt_img) for p in pids["one"]))
            two = set().union(*(file_frames(p, rt_img) for p in pids["two"]))
            assert len(one & two) > 256, (len(one), len(two), len(one & two))
            print("page-cache pages of the runtime image mapped by VMs of both functions: "
                  "%d (of %d and %d)" % (len(one & two), len(one), len(two)))
        print("runtime image mapped by %d VMs of two functions: Rss %d KiB, Pss %d KiB; "
              "top-layer files %s KiB" % (len(shared), sum(r for _, r, _ in shared),
                                          sum(p for _, _, p in shared),
                                          [os.stat(t).st_blocks // 2 for t in tops]))
        assert sd.invoke("one").json()["n"] >= 1 and sd.invoke("two").json() == {"second": 5929}


def test_damaged_runtime_layer_boots_cold(d):
    """A runtime layer whose manifest no longer verifies: the next python3 deploy says
    so in the log and its function boots cold (and answers); the deploy after that
    builds the runtime again and restores."""
    need_vm()
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1"}) as sd:
        deploy_py(sd, "first", SECOND)
        snaps = os.path.join(sd.data_dir, "vm-snapshots")
        rt_file, = os.listdir(os.path.join(snaps, "runtimes"))
        rt_id = snap_layers(os.path.join(snaps, "runtimes", rt_file))[0]
        store = os.path.join(snaps, "store")
        with open(os.path.join(store, "layers", rt_id), "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0x40]))
        os.unlink(os.path.join(store, "images", rt_id + ".img"))
        deploy_py(sd, "second", HANDLER)
        assert "runtime layer %s is damaged" % rt_file[:-5] in sd.logs(), sd.logs()
        assert "second v1 boots cold" in sd.logs(), sd.logs()
        r = sd.invoke("second")
        assert r.status == 200 and r.json()["n"] == 1, r
        m = metrics(sd)
        assert m["stoke_vm_boots_total"] == 1, m
        assert m["stoke_snapshot_runtime_damaged_total"] == 1, m
        deploy_py(sd, "third", SECOND)
        assert sd.invoke("third").json() == {"second": 5929}
        m = metrics(sd)
        assert cache(m, "runtime", "miss") == 2 and m["stoke_vm_boots_total"] == 1, m
        assert len(snap_layers(fn_snapshot(sd, "third"))) == 3


def orphan(store):
    """A page and a layer naming it that no snapshot references (as a crashed daemon
    leaves them): gc must remove both."""
    page = os.urandom(4096)
    pid = hashlib.sha256(page).hexdigest()
    os.makedirs(os.path.join(store, "pages", pid[:2]), exist_ok=True)
    with open(os.path.join(store, "pages", pid[:2], pid[2:]), "wb") as f:
        f.write(page)
    manifest = (b"STOKLAYR" + struct.pack("<II", 1, 0) + bytes(32) +
                struct.pack("<QQ", 256 << 20, 1) + struct.pack("<Q", 1000) + bytes.fromhex(pid))
    lid = hashlib.sha256(manifest).hexdigest()
    with open(os.path.join(store, "layers", lid), "wb") as f:
        f.write(manifest)
    return lid, pid


def test_gc_never_deletes_what_deployed_functions_use(d):
    """stoke gc while functions are deployed: it removes an orphan layer and its page
    and nothing else; with every image gone too, fresh VMs restore (images assembled
    again from the store's pages) and answer right, and a restarted daemon reuses the
    runtime layer."""
    need_vm()
    env = {"STOKE_VM_SNAPSHOTS": "1", "STOKE_VM_IDLE_TTL_S": "1"}
    sd = Daemon(env=env)
    sd.start()
    try:
        deploy_py(sd, "keep-a", HANDLER)
        deploy_py(sd, "keep-b", SECOND)
        deploy_py(sd, "gone", SECOND.replace("77", "78"))
        assert sd.invoke("keep-a").status == 200
        assert sd.admin("DELETE", "/functions/gone").status in (200, 204)
        store = os.path.join(sd.data_dir, "vm-snapshots", "store")
        lid, pid = orphan(store)
        images = os.path.join(store, "images")
        # A runtime snapshot of an older stoke-vmm or bootstrap (another key) goes too.
        runtimes = os.path.join(sd.data_dir, "vm-snapshots", "runtimes")
        current, = os.listdir(runtimes)
        shutil.copy(os.path.join(runtimes, current),
                    os.path.join(runtimes, "python3-256m-0123456789abcdef.snap"))
        r = sd.cli("gc")
        assert r.returncode == 0 and "freed" in r.stdout, r
        assert os.listdir(runtimes) == [current], r.stdout
        assert not os.path.exists(os.path.join(store, "layers", lid)), r.stdout
        assert pid not in stored_pages(store), r.stdout
        r = sd.cli("gc", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["vm"]["layers_removed"] == 0, r
        for f in os.listdir(images):
            os.unlink(os.path.join(images, f))
        time.sleep(3)   # the idle VMs (TTL 1 s) are stopped: the next requests restore
        before = metrics(sd)
        assert sd.invoke("keep-a").json()["chain"] == snapshot().original[0]["chain"]
        assert sd.invoke("keep-b").json() == {"second": 5929}
        m = metrics(sd)
        assert m["stoke_vm_restores_total"] >= before["stoke_vm_restores_total"] + 2, m
        # Their images were not in the cache: stoke-vmm assembled them from the store.
        assert cache(m, "image", "miss") >= cache(before, "image", "miss") + 2, m
        assert metric(sd, "stoke_vm_boots_total") == 0, sd.logs()
        assert sd.request("POST", "/_stoke/gc").status == 401
        assert sd.admin("GET", "/gc").status == 405
        sd.stop()
        sd.start()
        m = metrics(sd)
        assert cache(m, "runtime", "hit") == 2 and not cache(m, "runtime", "miss"), m
        assert sd.invoke("keep-b").json() == {"second": 5929}
        assert metric(sd, "stoke_vm_boots_total") == 0, sd.logs()
    finally:
        sd.close()


def test_gc_removes_the_dump_of_a_deploy_whose_daemon_died(d):
    """A daemon killed while a deploy's VM was dumping leaves KEY.dump (the guest's
    whole memory, sparse: 256 MiB long) and KEY.wsraw, with no KEY.snap beside them.
    gc removed such files only beside a .snap, so these stayed for good; a runtime
    layer's build left its dumps in runtimes/ the same way. Files of a build of the
    running daemon (its pid in the name) stay."""
    need_vm()
    dead = subprocess.Popen(["true"])
    dead.wait()
    top = os.path.join(d.data_dir, "vm-snapshots")
    os.makedirs(top, exist_ok=True)
    left = ["gone.3.%d.7.dump" % dead.pid, "gone.3.%d.7.wsraw" % dead.pid]
    ours = ["mine.1.%d.9.dump" % d.proc.pid]
    for name in left + ours:
        with open(os.path.join(top, name), "wb") as f:
            f.truncate(256 << 20)
    # The same for a runtime layer's build (KEY.snap.PID.dump, KEY.snap.PID.base.dump).
    rts = os.path.join(top, "runtimes")
    os.makedirs(rts, exist_ok=True)
    rt_left = ["python3-64m-00.snap.%d.dump" % dead.pid,
               "python3-64m-00.snap.%d.base.dump" % dead.pid]
    rt_ours = ["python3-64m-00.snap.%d.dump" % d.proc.pid]
    for name in rt_left + rt_ours:
        with open(os.path.join(rts, name), "wb") as f:
            f.truncate(64 << 20)
    r = d.admin("POST", "/gc")
    assert r.status == 200 and r.json()["vm"]["snapshot_files_removed"] >= 4, r
    names = os.listdir(top)
    assert not set(left) & set(names) and set(ours) <= set(names), names
    names = os.listdir(rts)
    assert not set(rt_left) & set(names) and set(rt_ours) <= set(names), names
    os.unlink(os.path.join(top, ours[0]))
    os.unlink(os.path.join(rts, rt_ours[0]))


def test_one_layer_per_version_when_layers_are_off(d):
    """STOKE_VM_SNAPSHOT_LAYERS=0: the version boots once and is snapshotted whole, as
    before runtime layers (kept for comparison); no runtime snapshot is made."""
    need_vm()
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1", "STOKE_VM_SNAPSHOT_LAYERS": "0"}) as sd:
        deploy_py(sd, "whole", SECOND)
        assert sd.invoke("whole").json() == {"second": 5929}
        assert len(snap_layers(fn_snapshot(sd, "whole"))) == 1
        runtimes = os.path.join(sd.data_dir, "vm-snapshots", "runtimes")
        assert not os.path.exists(runtimes) or not os.listdir(runtimes)
        assert metric(sd, "stoke_vm_restores_total") == 1, sd.logs()


CHATTY = """
import sys
print("import: loading the table")
print("import: warning on stderr", file=sys.stderr)
sys.stdout.write("no newline at the end")
def before_snapshot():
    print("before_snapshot ran")
def handler(event, context):
    print("handled")
    return "ok"
"""


def deploy_lines(sd, name, version):
    """The function's log lines under deploy-vVERSION, as (stream, message) pairs."""
    lines = sd.admin("GET", "/functions/%s/logs?limit=1024" % name).json()["lines"]
    return [(l["stream"], l["msg"]) for l in lines
            if l["request_id"] == "deploy-v%d" % version]


def test_import_and_before_snapshot_output_is_logged_once(d):
    """What a Python module prints while it is imported and in before_snapshot() runs
    once, at deploy, while the snapshot is made: it is kept in the function's logs under
    deploy-vN (first deploy and redeploy alike) and restored VMs do not print it again."""
    need_vm()
    with Daemon(env={"STOKE_VM_SNAPSHOTS": "1"}) as sd:
        deploy_py(sd, "chatty", CHATTY)
        want = [("stdout", "import: loading the table"),
                ("stderr", "import: warning on stderr"),
                ("stdout", "no newline at the endbefore_snapshot ran")]
        assert sorted(deploy_lines(sd, "chatty", 1)) == sorted(want), sd.logs()
        for _ in range(3):
            assert sd.invoke("chatty").status == 200
        deploy_py(sd, "chatty", CHATTY.replace("loading", "reloading"))
        assert sd.invoke("chatty").status == 200
        lines = sd.admin("GET", "/functions/chatty/logs?limit=1024").json()["lines"]
        msgs = [l["msg"] for l in lines]
        assert msgs.count("import: loading the table") == 1, msgs
        assert msgs.count("import: reloading the table") == 1, msgs
        assert msgs.count("handled") == 4, msgs
        assert ("stdout", "import: reloading the table") in deploy_lines(sd, "chatty", 2)

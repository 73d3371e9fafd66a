"""For the snapshot tests and bench/snapshot: a python3 VM driven over its channel, and
readers of stoke's snapshot files as docs/snapshots.md lays them out. Standard library
only."""
import hashlib
import json
import os
import socket
import struct
import subprocess
import time

from harness import BUILD, ROOT

VMM = os.path.join(BUILD, "src", "vmm", "stoke-vmm")
ROOTFS = os.path.join(os.environ.get("STOKE_CACHE", os.path.expanduser("~/.cache/stoke")),
                      "rootfs", "python3")
RUNTIME = os.path.join(ROOT, "runtimes", "python3")

ZERO_ID = "0" * 64


def function_args(task, extra, mem_mb=256, mode="1"):
    """stoke-vmm's arguments for python3's bootstrap (after the VMM's own options)."""
    args = ["--rootfs=" + ROOTFS, "--runtime=" + RUNTIME, "--mem-mb=%d" % mem_mb,
            "--env=STOKE_CHANNEL_FD=3", "--env=STOKE_ENTRY=handler.py",
            "--env=STOKE_SNAPSHOT=" + mode] + list(extra)
    args += ["--task=" + task] if task else []
    return args + ["--", "/usr/bin/python3", "-S", "/var/runtime/bootstrap.py"]


class Vmm:
    """One stoke-vmm process running python3's bootstrap, its channel a socketpair
    (mode: STOKE_SNAPSHOT, "1" or "runtime"; no task directory for a runtime). With
    shell=True it starts as a generic shell (--shell) and gets the rest by launch()."""

    def __init__(self, task, *extra, jail=False, mode="1", shell=False):
        mine, theirs = socket.socketpair()
        args = [VMM, "--channel-fd=%d" % theirs.fileno()] + ([] if jail else ["--no-jail"])
        args += ["--shell", "--mem-mb=256"] + list(extra) if shell else \
            function_args(task, extra, mode=mode)
        self.proc = subprocess.Popen(args, pass_fds=(theirs.fileno(),),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        theirs.close()
        self.sock = mine
        self.sock.settimeout(30)

    def launch(self, task, *extra, mem_mb=256):
        """A generic shell's launch frame (type 6): the rest of its command line."""
        payload = b"".join(a.encode() + b"\0" for a in function_args(task, extra, mem_mb))
        self.sock.sendall(struct.pack("<IBBH", len(payload), 6, 1, 0) + payload)

    def load(self, env):
        """The load frame a VM restored from a runtime snapshot waits for."""
        payload = json.dumps({"env": env}).encode()
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


def wait_dump(path, proc, timeout=60):
    """True once stoke-vmm wrote a whole dump at path; False if it said it took none
    (STOKNONE), exited, or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, "rb") as f:
                magic = f.read(8)
            if magic in (b"STOKDUMP", b"STOKNONE"):
                return magic == b"STOKDUMP"
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def snap_layers(path):
    """The layer ids (hex) a snapshot file names, top first."""
    with open(path, "rb") as f:
        data = f.read()
    for i in range(struct.unpack_from("<I", data, 24)[0]):
        typ, _, off, _ = struct.unpack_from("<IIQQ", data, 64 + 56 * i)
        if typ == 3:
            count, = struct.unpack_from("<I", data, off + 8)
            return [data[off + 16 + 32 * k:off + 48 + 32 * k].hex() for k in range(count)]
    raise ValueError("no layer list in " + path)


def layer_entries(store, lid):
    """{gpn: page id hex} of one layer manifest (verified against its name), and its
    parent id (or None)."""
    with open(os.path.join(store, "layers", lid), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != lid:
        raise ValueError("layer %s does not match its name" % lid)
    parent = data[16:48].hex() if struct.unpack_from("<I", data, 12)[0] & 1 else None
    n, = struct.unpack_from("<Q", data, 56)
    return {struct.unpack_from("<Q", data, 64 + 40 * i)[0]: data[72 + 40 * i:104 + 40 * i].hex()
            for i in range(n)}, parent


def stored_pages(store):
    """Names (ids) of the page files in a store."""
    top = os.path.join(store, "pages")
    return {d + f for d in os.listdir(top) for f in os.listdir(os.path.join(top, d))}


def top_file(store, lid):
    """A split image's top-layer file (docs/snapshots.md), trailer checksum verified:
    ({guest page: its 4 KiB}, runs as (first page, count), parent id hex, memory size)."""
    with open(os.path.join(store, "images", lid + ".top"), "rb") as f:
        data = f.read()
    hdr = data[-128:-32]
    n, mem = struct.unpack_from("<IQ", hdr, 12)
    pages, = struct.unpack_from("<Q", hdr, 88)
    if hdr[:8] != b"STOKTOPL" or len(data) != pages * 4096 + 16 * n + 128 or \
            hashlib.sha256(data[pages * 4096:-32]).digest() != data[-32:]:
        raise ValueError("top-layer file of %s does not verify" % lid)
    assert hdr[24:56].hex() == lid
    runs = [struct.unpack_from("<QQ", data, pages * 4096 + 16 * i) for i in range(n)]
    own, at = {}, 0
    for first, count in runs:
        for g in range(first, first + count):
            own[g] = data[at * 4096:at * 4096 + 4096]
            at += 1
    return own, runs, hdr[56:88].hex(), mem


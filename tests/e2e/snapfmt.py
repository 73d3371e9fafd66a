"""Readers of stoke's snapshot files as docs/snapshots.md lays them out, for the
snapshot tests and bench/snapshot. Standard library only."""
import hashlib
import os
import struct
import time

ZERO_ID = "0" * 64


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

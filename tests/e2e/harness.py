"""End-to-end test harness: starts the real `stoke serve` on a free loopback port with a
fresh data directory and talks HTTP to it. Standard library only.

    from harness import Daemon
    def test_something(d):            # d: a Daemon shared by the module's tests
        d.deploy_files("hello", {"index.js": "export default {...}"})
        status, headers, body = d.request("GET", "/fn/hello/")
"""
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("STOKE_BUILD", os.path.join(ROOT, "build"))
STOKE = os.path.join(BUILD, "src", "cli", "stoke")
EXAMPLES = os.path.join(ROOT, "examples")


class Skip(Exception):
    """Raised by a test that cannot run on this machine (says why)."""


def known_issue(reason):
    """Marks a test that shows a bug not fixed yet. The runner reports its failure as
    skipped with the reason (the bug stays visible), and reports a pass as a failure,
    so that a fixed bug gets its marker removed."""
    def mark(fn):
        fn.known_issue = reason
        return fn
    return mark


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_files(path):
    """A directory (or one file) as {relative path: bytes}, like `stoke deploy` sends."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return {os.path.basename(path): f.read()}
    out = {}
    for top, dirs, names in os.walk(path):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x != "node_modules"]
        for n in names:
            full = os.path.join(top, n)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __iter__(self):  # status, headers, body = d.request(...)
        return iter((self.status, self.headers, self.body))

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


class Daemon:
    def __init__(self, *args, data_dir=None, env=None, session=False):
        self.session = session  # own process group, as a shell's foreground job has
        self.port = free_port()
        self.tmp = tempfile.TemporaryDirectory(prefix="stoke-e2e-")
        self.data_dir = data_dir or os.path.join(self.tmp.name, "data")
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.log_path = os.path.join(self.tmp.name, "daemon.log")
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=30):
        self.log = open(self.log_path, "ab")
        cmd = [STOKE, "serve", "--listen", "127.0.0.1:%d" % self.port,
               "--data-dir", self.data_dir] + self.args
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=self.session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("stoke serve exited %d:\n%s" %
                                   (self.proc.returncode, self.logs()))
            try:
                if self.request("GET", "/_stoke/health", auth=False).status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("stoke serve did not answer within %ds" % timeout)

    @property
    def token(self):
        with open(os.path.join(self.data_dir, "token")) as f:
            return f.read().strip()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the daemon; returns its exit code."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def close(self):
        try:
            self.stop()
        finally:
            self.log.close()
            self.tmp.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def request(self, method, path, body=None, headers=None, host=None, auth=False,
                timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if host:
            h["Host"] = host
        if auth:
            h["Authorization"] = "Bearer " + self.token
        if isinstance(body, str):
            body = body.encode()
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def admin(self, method, path, obj=None):
        body = json.dumps(obj).encode() if obj is not None else None
        return self.request(method, "/_stoke" + path, body=body, auth=True,
                            headers={"Content-Type": "application/json"})

    def deploy_files(self, name, files, manifest=None, expect=201):
        """Deploys {path: str|bytes}; asserts the status (None: no check)."""
        enc = {p: base64.b64encode(c.encode() if isinstance(c, str) else c).decode()
               for p, c in files.items()}
        body = {"files": enc}
        if manifest is not None:
            body["manifest"] = manifest
        r = self.admin("PUT", "/functions/" + name, body)
        if expect is not None and r.status != expect:
            raise AssertionError("deploy %s: %d %s" % (name, r.status, r.text))
        return r

    def deploy_dir(self, path, name=None, expect=201, **overrides):
        files = read_files(path)
        manifest = {}
        if "stoke.json" in files:
            manifest = json.loads(files["stoke.json"])
        manifest.update(overrides)
        name = name or manifest.get("name") or os.path.basename(path.rstrip("/"))
        return self.deploy_files(name, files, manifest, expect)

    def invoke(self, name, path="/", method="GET", body=None, headers=None):
        return self.request(method, "/fn/%s%s" % (name, path), body=body, headers=headers)

    def cli(self, *args, input=None, timeout=60):
        """Runs the stoke CLI against this daemon; returns CompletedProcess (text)."""
        env = dict(self.env, STOKE_URL=self.url, STOKE_DATA_DIR=self.data_dir)
        return subprocess.run([STOKE] + list(args), env=env, input=input, text=True,
                              capture_output=True, timeout=timeout)


def kvm_usable():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)

"""scripts/run when its daemon cannot come up: the address is taken by another daemon,
or another daemon already serves the data directory. It must say so on the terminal,
exit 1, and deploy nothing to the daemon that is already there; its build stays quiet."""
import fcntl
import json
import os
import subprocess

from harness import BUILD, ROOT, Skip, free_port

RUN = os.path.join(ROOT, "scripts", "run")


def run_script(d, listen, data_dir, path_first=None):
    if os.path.realpath(BUILD) != os.path.realpath(os.path.join(ROOT, "build")):
        raise Skip("scripts/run builds into build/, the tests use STOKE_BUILD=%s" % BUILD)
    env = dict(d.env, STOKE_LISTEN=listen, STOKE_DATA_DIR=data_dir)
    if path_first:
        env["PATH"] = path_first + os.pathsep + env.get("PATH", "")
    env.pop("STOKE_LOG", None)
    return subprocess.run([RUN], env=env, text=True, capture_output=True, timeout=300,
                          cwd="/")


def functions(d):
    r = d.cli("ls", "--json")
    assert r.returncode == 0, r.stderr
    return [f["name"] for f in json.loads(r.stdout)["functions"]]


def lock_is_free(data_dir):
    with open(os.path.join(data_dir, "lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_port_taken_by_another_daemon(d):
    mine = os.path.join(d.tmp.name, "run-own-data")
    listen = "127.0.0.1:%d" % d.port
    r = run_script(d, listen, mine)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "run: %s is in use by another program" % listen in r.stderr, r.stderr
    assert "Set STOKE_LISTEN=127.0.0.1:PORT" in r.stderr, r.stderr
    # The daemon's own reason, from its log, on the terminal.
    assert "cannot listen on %s: Address already in use" % listen in r.stderr, r.stderr
    assert "wrong token" not in r.stderr and "stoke is serving" not in r.stdout
    assert functions(d) == [], "deployed to the daemon already on the port"
    assert lock_is_free(mine), "its own daemon is still running"
    # Quiet build: none of meson's or ninja's lines.
    assert "ninja" not in r.stdout + r.stderr and len(r.stderr.splitlines()) < 15, r.stderr


def test_data_dir_already_served(d):
    for listen in ("127.0.0.1:%d" % d.port, "127.0.0.1:%d" % free_port()):
        r = run_script(d, listen, d.data_dir)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "run: a stoke daemon (pid %d) already serves the data directory %s" % (
            d.proc.pid, d.data_dir) in r.stderr, r.stderr
        assert "at %s;" % d.url in r.stderr and "kill %d" % d.proc.pid in r.stderr
        assert "export STOKE_URL=%s STOKE_DATA_DIR=%s" % (d.url, d.data_dir) in r.stderr
        assert "stoke is serving" not in r.stdout and "deployed" not in r.stdout
        assert functions(d) == []
    assert d.proc.poll() is None and d.cli("status").returncode == 0


def test_failed_build_is_shown_and_stops(d):
    """The build's output, hidden on success, is shown when it fails; nothing starts."""
    fake = os.path.join(d.tmp.name, "fake-bin")
    os.makedirs(fake, exist_ok=True)
    ninja = os.path.join(fake, "ninja")
    with open(ninja, "w") as f:
        f.write("#!/bin/sh\necho 'src/x.c:1:1: error: made to fail'\nexit 1\n")
    os.chmod(ninja, 0o755)
    data = os.path.join(d.tmp.name, "run-never-started")
    r = run_script(d, "127.0.0.1:%d" % free_port(), data, path_first=fake)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "src/x.c:1:1: error: made to fail\nrun: the build failed" in r.stderr, r.stderr
    assert not os.path.exists(data)

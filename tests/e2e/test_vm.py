"""The micro-VM tier end to end: real daemon, real HTTP, real KVM process VMs."""
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from harness import EXAMPLES, Daemon, Skip, kvm_usable

ROOTFS = os.path.join(os.environ.get("STOKE_CACHE", os.path.expanduser("~/.cache/stoke")),
                      "rootfs", "python3")

STATEFUL = """
import os, sys
count = 0
def handler(event, context):
    global count
    count += 1
    p = event["path"]
    if p == "/crash":
        import ctypes; ctypes.string_at(0)
    if p == "/exit":
        print("going away", file=sys.stderr); sys.stderr.flush(); os._exit(7)
    if p == "/loop":
        while True: pass
    if p == "/sleep":
        import time
        time.sleep(0.3)
        return "slept"
    if p == "/log":
        print("hello from the guest")
    if p == "/cookies":
        return {"statusCode": 302, "headers": {"location": "/"},
                "multiValueHeaders": {"x-multi": ["a", "b"]}, "cookies": ["a=1", "b=2"]}
    if p == "/pipe":
        try:
            os.pipe()
        except OSError as e:
            return {"statusCode": 200, "body": e.strerror}
    if p == "/shadow":
        for path in ("/etc/shadow", "/../../etc/shadow", "/proc/1/root/etc/hostname"):
            try:
                open(path).read()
            except OSError:
                continue
            if path != "/etc/shadow":
                return {"statusCode": 500, "body": "escaped via " + path}
        return {"statusCode": 200, "body": "contained"}
    if p == "/tmp":
        with open("/tmp/x", "w") as f:
            f.write("y" * 1000)
        return open("/tmp/x").read()[:3]
    if p == "/tmpfull":
        try:
            with open("/tmp/big", "wb") as f:
                for _ in range(64):
                    f.write(b"z" * (1 << 20))
        except OSError as e:
            return {"statusCode": 200, "body": "full: " + e.strerror}
        return {"statusCode": 500, "body": "wrote 64 MiB into a 2 MiB /tmp"}
    if p == "/hog":
        try:
            hog = [bytearray(1 << 20) for _ in range(1024)]
        except MemoryError:
            return {"statusCode": 200, "body": "memory error"}
        return {"statusCode": 500, "body": "allocated %d MiB" % len(hog)}
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"count": count, "method": event["method"],
                                "query": event["query"], "body": event["body"],
                                "b64": event["isBase64Encoded"],
                                "remaining": context.get_remaining_time_in_millis() > 0})}
import json
"""


def need_vm():
    if not kvm_usable():
        raise Skip("no usable /dev/kvm")
    if not os.path.exists(os.path.join(ROOTFS, "usr/bin/python3")):
        raise Skip("no python3 root file system (run scripts/setup)")


def deploy_stateful(d, name="vmstate", **limits):
    manifest = {"name": name, "tier": "vm", "runtime": "python3", "entry": "handler.py"}
    if limits:
        manifest["limits"] = limits
    d.deploy_files(name, {"handler.py": STATEFUL}, manifest)


def test_hello_py(d):
    need_vm()
    d.deploy_dir(os.path.join(EXAMPLES, "hello-py"))
    r = d.invoke("hello-py", "/greet?name=vm")
    assert r.status == 200, r
    assert r.json()["hello"] == "vm" and r.json()["path"] == "/greet"


def test_warm_reuse_keeps_state(d):
    need_vm()
    deploy_stateful(d)
    first = d.invoke("vmstate", "/?a=1&a=2", method="POST", body="hi")
    second = d.invoke("vmstate", "/")
    assert first.status == 200 and second.status == 200, (first, second)
    assert first.json()["query"] == {"a": ["1", "2"]} and first.json()["body"] == "hi"
    assert first.json()["remaining"]
    assert second.json()["count"] == first.json()["count"] + 1


def test_binary_body_is_base64(d):
    need_vm()
    deploy_stateful(d)
    r = d.invoke("vmstate", "/", method="POST", body=bytes([0xff, 0xfe, 0x00]))
    assert r.status == 200 and r.json()["b64"] is True


def test_crash_gives_502_and_fresh_vm(d):
    need_vm()
    deploy_stateful(d)
    d.invoke("vmstate", "/")
    r = d.invoke("vmstate", "/crash")
    assert r.status == 502 and r.json()["error"] == "crash", r
    r = d.invoke("vmstate", "/")
    assert r.status == 200 and r.json()["count"] == 1


def test_exit_logs_stderr(d):
    need_vm()
    deploy_stateful(d)
    r = d.invoke("vmstate", "/exit")
    assert r.status == 502 and "status 7" in r.json()["message"], r
    assert "going away" not in r.text, r  # the output is the logs', not the caller's
    d.invoke("vmstate", "/log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logs = d.admin("GET", "/functions/vmstate/logs").text
        if "going away" in logs and "hello from the guest" in logs:
            return
        time.sleep(0.2)
    raise AssertionError("guest output missing from the function log: " + logs[-2000:])


ENDS_AFTER_ANSWER = r"""
import json, os, sys
def handler(event, context):
    if event["path"] == "/answer-then-exit":
        body = json.dumps({"statusCode": 200, "body": "answered"}).encode()
        os.write(3, len(body).to_bytes(4, "little") + bytes([2, 1, 0, 0]) + body)
        print("exiting after the answer", file=sys.stderr)
        os._exit(3)
    return "served"
"""


def test_idle_vm_that_ended_does_not_fail_the_next_request(d):
    """A VM whose program exits after it answered sits on the idle list dead: the next
    request never ran in it, so it must not get its 502; it goes to another VM, and the
    function's log says what happened (with what the VM printed last)."""
    need_vm()
    d.deploy_files("ender", {"handler.py": ENDS_AFTER_ANSWER},
                   {"tier": "vm", "runtime": "python3", "entry": "handler.py"})
    assert d.invoke("ender").text == "served"
    r = d.invoke("ender", "/answer-then-exit")
    assert r.status == 200 and r.text == "answered", r
    time.sleep(0.3)     # the VM exits after its answer
    for _ in range(3):
        r = d.invoke("ender")
        assert r.status == 200 and r.text == "served", r
    logs = d.admin("GET", "/functions/ender/logs").text
    assert "had ended since its last request" in logs, logs[-2000:]
    assert "exiting after the answer" in logs, logs[-2000:]


def test_timeout_gives_504(d):
    need_vm()
    deploy_stateful(d, "vmslow", wall_s=1)
    t0 = time.monotonic()
    r = d.invoke("vmslow", "/loop")
    assert r.status == 504 and r.json()["error"] == "wall_limit", r
    assert time.monotonic() - t0 < 10
    assert d.invoke("vmslow", "/").status == 200


def test_enosys_is_counted(d):
    need_vm()
    deploy_stateful(d)
    r = d.invoke("vmstate", "/pipe")
    assert r.status == 200 and "not implemented" in r.text.lower(), r
    m = d.admin("GET", "/metrics").text
    assert 'stoke_vm_enosys_total{function="vmstate",syscall="pipe2"}' in m, m[-2000:]
    assert "stoke_vm_boots_total" in m


def test_function_is_contained(d):
    need_vm()
    deploy_stateful(d)
    r = d.invoke("vmstate", "/shadow")
    assert r.status == 200 and r.text == "contained", r
    assert d.invoke("vmstate", "/tmp").text == "yyy"


def test_native_hello_c(d):
    need_vm()
    cc = shutil.which("cc")
    if not cc:
        raise Skip("no C compiler")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "hello")
        subprocess.run([cc, "-O2", "-static", "-o", exe,
                        os.path.join(EXAMPLES, "hello-c", "hello.c")], check=True)
        with open(exe, "rb") as f:
            binary = f.read()
    d.deploy_files("hello-c", {"hello": binary},
                   {"name": "hello-c", "tier": "vm", "runtime": "native", "entry": "hello"})
    r1, r2 = d.invoke("hello-c", "/"), d.invoke("hello-c", "/")
    assert r1.status == 200 and r1.text == "hello from C, request 1\n", r1
    assert r2.text == "hello from C, request 2\n"


def test_limits_tmp_and_memory(d):
    need_vm()
    deploy_stateful(d, "vmsmall", tmp_mb=2, memory_mb=128)
    r = d.invoke("vmsmall", "/tmpfull")
    assert r.status == 200 and r.text.startswith("full:"), r
    r = d.invoke("vmsmall", "/hog")
    assert r.status == 200 and r.text == "memory error", r
    assert d.invoke("vmsmall", "/").status == 200


def test_native_c_source_compiled_at_deploy(d):
    need_vm()
    if not shutil.which("cc"):
        raise Skip("no C compiler")
    d.deploy_dir(os.path.join(EXAMPLES, "hello-c"))
    r = d.invoke("hello-c", "/")
    assert r.status == 200 and r.text == "hello from C, request 1\n", r
    bad = d.deploy_files("broken-c", {"main.c": "int main(void) { return x; }\n"},
                         {"name": "broken-c", "tier": "vm", "runtime": "native",
                          "entry": "main.c"}, expect=None)
    assert bad.status >= 400 and "main.c:1" in bad.text, bad
    # A program that does not speak the channel: the caller and the log learn so.
    d.deploy_files("mute-c", {"main.c": "int main(void) { return 0; }\n"},
                   {"tier": "vm", "runtime": "native", "entry": "main.c"})
    r = d.invoke("mute-c", "/")
    assert r.status == 502 and "status 0 without answering" in r.json()["message"], r
    assert "docs/channel-abi.md" in d.admin("GET", "/functions/mute-c/logs").text


def test_multi_value_headers_and_cookies(d):
    need_vm()
    deploy_stateful(d)
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    conn.request("GET", "/fn/vmstate/cookies")
    r = conn.getresponse()
    r.read()
    assert r.status == 302 and r.getheader("location") == "/"
    assert sorted(v for k, v in r.getheaders() if k.lower() == "set-cookie") == ["a=1", "b=2"]
    assert sorted(v for k, v in r.getheaders() if k.lower() == "x-multi") == ["a", "b"]
    conn.close()


RETURNS = """
def handler(event, context):
    return {"/str": "text", "/bytes": b"\\xff", "/none": None, "/list": [1, 2],
            "/dict": {"ok": True}, "/set": {1, 2}}[event["path"]]
"""


def test_handler_return_values(d):
    """What the README promises for each kind of value a handler returns."""
    need_vm()
    d.deploy_files("vmreturns", {"handler.py": RETURNS},
                   {"tier": "vm", "runtime": "python3", "entry": "handler.py"})
    want = {"/str": b"text", "/bytes": b"\xff", "/none": b"", "/list": b"[1, 2]",
            "/dict": b'{"ok": true}'}
    for path, body in want.items():
        r = d.invoke("vmreturns", path)
        assert r.status == 200 and r.body == body, (path, r)
    # A value that cannot be sent is the return value's fault, not the handler's.
    r = d.invoke("vmreturns", "/set")
    assert r.status == 500 and r.json()["error"] == "bad_response", r
    assert "returned a set" in r.json()["message"], r
    logs = d.admin("GET", "/functions/vmreturns/logs").text
    assert "not JSON serializable" in logs, logs[-2000:]


def test_python_load_errors_name_the_problem_once(d):
    """A module without handler, or a handler that cannot take (event, context), fails
    the deploy with one sentence naming the entry once."""
    need_vm()
    cases = {"x = 1\n": "handler.py defines no callable 'handler'",
             "def handler(event):\n    return 'x'\n":
             "handler.py: handler(event) cannot be called as handler(event, context)"}
    for src, want in cases.items():
        r = d.deploy_files("pyload", {"handler.py": src},
                           {"tier": "vm", "runtime": "python3", "entry": "handler.py"},
                           expect=None)
        msg = r.json()["message"]
        assert r.status == 400 and msg.startswith(want), (want, r)
        assert msg.count("handler.py") == 1, msg
    for ok in ("def handler(event, context=None, extra=1):\n    return 'ok'\n",
               "def handler(*args):\n    return 'ok'\n"):
        d.deploy_files("pyload", {"handler.py": ok},
                       {"tier": "vm", "runtime": "python3", "entry": "handler.py"})
        assert d.invoke("pyload").text == "ok"


def concurrent_invokes(d, name, path, n):
    """n requests at once, each on its own connection; returns (responses, seconds)."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(d.invoke(name, path)))
               for _ in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, time.monotonic() - t0


def test_concurrent_requests_use_parallel_vms(d):
    """16 requests that each sleep 300 ms run on 16 VMs at once, not one after another."""
    need_vm()
    deploy_stateful(d, "vmpar", max_instances=16)
    results, _ = concurrent_invokes(d, "vmpar", "/sleep", 16)
    assert [r.status for r in results] == [200] * 16, results
    warm, took = concurrent_invokes(d, "vmpar", "/sleep", 16)
    assert [r.status for r in warm] == [200] * 16, warm
    assert took < 16 * 0.3 / 2, "16 warm 300 ms requests took %.1f s" % took


def test_max_instances_bounds_the_vms_running_at_once(d):
    """Six concurrent 300 ms requests to a function with max_instances 2 run two at a
    time (three rounds), the others waiting in its queue; none is refused or fails.
    They used to run on six VMs at once: the tier took no notice of the limit."""
    need_vm()
    deploy_stateful(d, "vmcap", max_instances=2)
    assert d.invoke("vmcap", "/sleep").status == 200
    results, took = concurrent_invokes(d, "vmcap", "/sleep", 6)
    assert [r.status for r in results] == [200] * 6, results
    assert took >= 3 * 0.3 - 0.05, "6 requests with max_instances 2 took %.2f s" % took


ENVS = "import os\ndef handler(e, c):\n    return str(sum(len(k) + len(v) for k, v in " \
    "os.environ.items() if k.startswith('K')))\n"


def test_env_over_the_vm_limits_is_refused_naming_env(d):
    """A micro-VM gets its env on the VMM's command line, which has room for so much:
    32 variables and 4 KiB of names and values are documented and served; more is a 400
    naming env and the limit (it was a 400 blaming the entry file with 'Argument list too
    long', at limits that depended on the length of the data directory's path)."""
    need_vm()
    manifest = {"tier": "vm", "runtime": "python3", "entry": "handler.py"}
    fits = {"K%02d" % i: "v" * 125 for i in range(32)}  # 32 x 128 = 4096 bytes
    d.deploy_files("vmenv", {"handler.py": ENVS}, dict(manifest, env=fits))
    assert d.invoke("vmenv").text == "4096"
    for env in ({"K%02d" % i: "v" for i in range(33)}, dict(fits, K00="v" * 126),
                {"A": "x" * 200000}):
        r = d.deploy_files("vmenv", {"handler.py": ENVS}, dict(manifest, env=env),
                           expect=400)
        j = r.json()
        assert j["field"] == "env" and "32" in j["message"] and "4096" in j["message"], j
    assert d.invoke("vmenv").text == "4096"


def test_idle_budget_counts_what_idle_vms_cost():
    """A 600 MiB idle budget holds two VMs counted at their 256 MiB guest size; counted at
    what they cost the host (their cgroup's charge, ~15 MiB booted), every VM a burst of
    four concurrent requests started stays warm, and the gauge shows far less than
    256 MiB per VM."""
    need_vm()
    if os.geteuid() != 0:
        raise Skip("per-VM cgroups (the measured cost) need root")
    mib = 1 << 20
    env = {"STOKE_MEMORY_BUDGET_MB": "600", "STOKE_VM_SNAPSHOTS": "0"}
    with Daemon(env=env) as d:
        deploy_stateful(d, "vmbudget", max_instances=4)
        for burst in range(2):
            results = []
            threads = [threading.Thread(target=lambda: results.append(
                d.invoke("vmbudget", "/sleep"))) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert [r.status for r in results] == [200] * 4, results
            time.sleep(0.3)  # the workers park (or stop) their VMs after answering
            m = vm_metrics(d)
            vms = m["stoke_vm_boots_total"]
            # None stopped for the budget: every VM booted is alive (idle).
            assert vms >= 3 and m["stoke_vm_live"] == vms, (burst, m)
            assert vms * mib < m["stoke_vm_idle_bytes"] < vms * 100 * mib, m


def vm_metrics(d):
    out = {}
    for line in d.request("GET", "/_stoke/metrics", auth=True).text.splitlines():
        if line.startswith("stoke_vm_") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_python_import_errors_fail_the_deploy(d):
    need_vm()
    r = d.deploy_files("pysyntax", {"handler.py": "def handler(e, c)\n    return 1\n"},
                       {"tier": "vm", "runtime": "python3"}, expect=400)
    assert r.json()["field"] == "entry" and "SyntaxError" in r.json()["message"], r
    assert 'handler.py", line 1' in r.json()["message"]
    r = d.deploy_files("pynohandler", {"handler.py": "x = 1\n"},
                       {"tier": "vm", "runtime": "python3"}, expect=400)
    assert "no callable 'handler'" in r.json()["message"], r
    assert d.invoke("pysyntax").status == 404  # nothing half-deployed


REMAINING = """
import time
def handler(event, context):
    if event["path"] == "/sleep":
        time.sleep(1.5)
    return str(context.get_remaining_time_in_millis())
"""


def test_remaining_time_is_the_wall_limit(d):
    """The guest's deadline is the function's wall_s from the request, not the daemon's
    backstop (which adds a grace second, and a cold start's boot allowance)."""
    need_vm()
    d.deploy_files("pyleft", {"handler.py": REMAINING},
                   {"tier": "vm", "runtime": "python3", "limits": {"wall_s": 3}})
    for what in ("cold", "warm"):
        r = d.invoke("pyleft")
        assert r.status == 200, r
        assert 2000 < int(r.text) <= 3000, (what, r.text)


def test_ctrl_c_finishes_inflight_vm_request():
    """Ctrl-C signals the terminal's whole foreground process group; the VMs must not
    die with it while the daemon drains in-flight requests."""
    need_vm()
    with Daemon(session=True) as d:
        d.deploy_files("pyctrlc", {"handler.py": REMAINING},
                       {"tier": "vm", "runtime": "python3", "limits": {"wall_s": 10}})
        assert d.invoke("pyctrlc").status == 200
        results = []
        t = threading.Thread(target=lambda: results.append(d.invoke("pyctrlc", "/sleep")))
        t.start()
        time.sleep(0.5)
        os.killpg(d.proc.pid, signal.SIGINT)
        t.join(20)
        assert results and results[0].status == 200, results
        assert d.proc.wait(20) == 0


def test_native_entry_that_is_not_a_program_fails_the_deploy(d):
    """A text file deployed as a native function used to deploy and then answer every
    request with 502 'Exec format error'."""
    need_vm()
    r = d.deploy_files("notes", {"notes.txt": "remember the milk\n"},
                       {"entry": "notes.txt"}, expect=400)
    assert r.json()["field"] == "entry", r
    assert "not an x86-64 ELF program" in r.json()["message"], r
    assert d.invoke("notes").status == 404


def test_python_exception_text_goes_to_logs_not_to_the_caller(d):
    need_vm()
    d.deploy_files("pyleaky", {"handler.py": "def handler(event, context):\n"
                               "    raise ValueError('db password hunter2')\n"},
                   {"tier": "vm", "runtime": "python3"})
    r = d.invoke("pyleaky")
    assert r.status == 500 and r.json()["error"] == "handler_error", r
    assert "hunter2" not in r.text and "ValueError" in r.json()["message"], r
    rid = r.headers["x-stoke-request-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = d.admin("GET", "/functions/pyleaky/logs").json()["lines"]
        if any("hunter2" in l["msg"] for l in lines if l["request_id"] == rid):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the traceback is not in the function's logs: %r" % lines)


def test_function_that_fails_to_load_at_start_stays_listed():
    """A deployed version that cannot be loaded when the daemon starts (here its runtime's
    root file system is gone) stays in ls and show with the reason for its owner; its
    callers get 503 without that reason; rm removes it."""
    need_vm()
    with Daemon() as d:
        d.deploy_files("pygone", {"handler.py": "def handler(e, c):\n    return 'hi'\n"},
                       {"tier": "vm", "runtime": "python3"})
        assert d.stop() == 0
        d.args += ["--rootfs-dir", os.path.join(d.tmp.name, "no-such-rootfs")]
        d.start()
        listed = {f["name"]: f for f in d.admin("GET", "/functions").json()["functions"]}
        assert listed["pygone"]["status"] == "failed", listed
        shown = d.admin("GET", "/functions/pygone").json()
        assert shown["version"] == 1 and "no-such-rootfs" in shown["error"], shown
        out = d.cli("ls")
        assert "pygone" in out.stdout and "LOAD FAILED" in out.stdout, out.stdout
        r = d.invoke("pygone")
        assert r.status == 503 and r.json()["error"] == "unavailable", r
        assert "no-such-rootfs" not in r.text and "stoke show pygone" in r.text, r
        assert d.admin("DELETE", "/functions/pygone").status in (200, 204)
        assert d.admin("GET", "/functions/pygone").status == 404

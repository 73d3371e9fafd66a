"""The daemon's HTTP front door, admin API and registry, end to end over real HTTP."""
import json
import os
import signal
import socket
import threading
import time

from harness import Daemon, free_port

HELLO = """export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const body = request.method === "POST" ? await request.text() : "";
    return new Response(JSON.stringify({
      method: request.method, path: url.pathname, query: url.search,
      host: request.headers.get("host"), body, greeting: env.GREETING || null,
      xtest: request.headers.get("x-test")}),
      {headers: {"content-type": "application/json", "x-fn": "hello"}});
  }
};
"""

SLOW = """export default {
  async fetch(request) {
    await new Promise(r => setTimeout(r, 600));
    return new Response("slow done");
  }
};
"""


def raw(d, data, timeout=10, read_until_close=True):
    """Sends raw bytes on one connection and returns everything read back."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=timeout) as s:
        s.sendall(data)
        if read_until_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def test_health_needs_no_token(d):
    r = d.request("GET", "/_stoke/health")
    assert r.status == 200 and r.json()["ok"] is True and r.json()["accepting"] is True
    assert "reason" not in r.json() and r.json()["min_free_mb"] == 256


def test_admin_requires_token(d):
    r = d.request("GET", "/_stoke/functions")
    assert r.status == 401
    assert r.json()["error"] == "unauthorized"
    r = d.request("GET", "/_stoke/functions", headers={"Authorization": "Bearer nope"})
    assert r.status == 401


def test_token_file_is_private(d):
    st = os.stat(os.path.join(d.data_dir, "token"))
    assert st.st_mode & 0o777 == 0o600
    assert len(d.token) == 64


def test_unknown_function_is_404_json(d):
    r = d.invoke("no-such-fn")
    assert r.status == 404
    assert r.headers["content-type"] == "application/json"
    assert "no-such-fn" in r.json()["message"]


def test_unrouted_path_is_404_json(d):
    r = d.request("GET", "/elsewhere")
    assert r.status == 404 and r.json()["error"] == "not_found"
    assert "Host: NAME.localhost" in r.json()["message"]  # the configured domain


def test_deploy_and_invoke_by_path(d):
    r = d.deploy_files("hello", {"index.js": HELLO}, {"env": {"GREETING": "hi"}})
    info = r.json()
    assert info["name"] == "hello" and info["tier"] == "isolate" and info["version"] >= 1
    r = d.invoke("hello", "/a/b?x=1&y=2", headers={"X-Test": "yes"})
    assert r.status == 200, r
    body = r.json()
    assert body["method"] == "GET" and body["path"] == "/a/b" and body["query"] == "?x=1&y=2"
    assert body["greeting"] == "hi" and body["xtest"] == "yes"
    assert r.headers["x-fn"] == "hello"
    assert len(r.headers["x-stoke-request-id"]) == 16


def test_invoke_by_host(d):
    d.deploy_files("hosted", {"index.js": HELLO})
    r = d.request("GET", "/p?q=1", host="hosted.localhost:%d" % d.port)
    assert r.status == 200, r
    assert r.json()["path"] == "/p" and r.json()["query"] == "?q=1"


def test_root_path_and_bare_query(d):
    d.deploy_files("rooted", {"index.js": HELLO})
    assert d.request("GET", "/fn/rooted").json()["path"] == "/"
    r = d.request("GET", "/fn/rooted?z=9").json()
    assert r["path"] == "/" and r["query"] == "?z=9"


def test_post_body_round_trip(d):
    d.deploy_files("echo", {"index.js": HELLO})
    r = d.invoke("echo", "/", "POST", body="x" * 100000)
    assert r.status == 200 and r.json()["body"] == "x" * 100000


def test_chunked_request_body(d):
    d.deploy_files("chunky", {"index.js": HELLO})
    req = (b"POST /fn/chunky/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    out = raw(d, req)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert b'"body":"hello world"' in out


def test_request_arriving_while_one_is_served(d):
    """The connection stays readable while a request is served elsewhere (route.c,
    gw_keep_reading): a request sent before the first one's answer, and a client that
    goes away mid-request, must both be handled as if reading had stopped."""
    d.deploy_files("held", {"index.js": SLOW})
    d.deploy_files("quick", {"index.js": HELLO})
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(b"GET /fn/held/first HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the first is in flight now
        s.sendall(b"GET /fn/quick/second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            out += got
    assert out.count(b"HTTP/1.1 200") == 2, out
    assert out.index(b"slow done") < out.index(b"/second"), out
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(b"GET /fn/held/gone HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
    r = d.invoke("quick", "/after")
    assert r.status == 200, r
    # The abandoned request still runs its 600 ms; later tests share this daemon.
    deadline = time.monotonic() + 10
    while d.admin("GET", "/status").json()["inflight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.admin("GET", "/status").json()["inflight"] == 0


def test_keepalive_and_pipelining(d):
    d.deploy_files("pipe", {"index.js": HELLO})
    one = b"GET /fn/pipe/%d HTTP/1.1\r\nHost: x\r\n\r\n"
    req = b"".join(one % i for i in range(5))
    req += b"GET /fn/pipe/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(d, req, read_until_close=False)
    assert out.count(b"HTTP/1.1 200") == 6, out
    # answers come back in request order
    positions = [out.index(b'"path":"/%d"' % i) for i in range(5)]
    assert positions == sorted(positions)
    assert out.rindex(b'"path":"/last"') > positions[-1]


def test_malformed_request_is_400(d):
    out = raw(d, b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out[:100]
    assert d.request("GET", "/_stoke/health").status == 200


def test_oversized_headers_rejected(d):
    d.deploy_files("hdr", {"index.js": HELLO})
    big = {"X-Big-%d" % i: "v" * 8000 for i in range(10)}
    r = d.invoke("hdr", headers=big)
    assert r.status in (400, 431), r
    if r.status == 431:
        assert r.json()["error"] == "headers_too_large"
    # 40 KiB of headers is within the 64 KiB limit
    ok = {"X-Ok-%d" % i: "v" * 8000 for i in range(5)}
    assert d.invoke("hdr", headers=ok).status == 200


def test_oversized_body_is_413(d):
    d.deploy_files("big", {"index.js": HELLO})
    r = d.invoke("big", "/", "POST", body=b"x" * (10 * 1024 * 1024 + 10))
    assert r.status == 413, r
    assert r.json()["error"] == "body_too_large"


def test_deploy_invalid_fields_name_the_field(d):
    cases = [
        ({"tier": "gpu"}, "tier"),
        ({"limits": {"cpu_ms": -5}}, "limits.cpu_ms"),
        ({"limits": {"memory_mb": "lots"}}, "limits.memory_mb"),
        ({"limits": {"bogus": 1}}, "limits.bogus"),
        ({"colour": "red"}, "colour"),
        ({"env": {"A": 1}}, "env"),
        ({"entry": "missing.js"}, "entry"),
        ({"entry": "../etc/passwd"}, "entry"),
        ({"name": "other"}, "name"),
        ({"isolation": "paranoid"}, "isolation"),
        ({"state": "forever"}, "state"),
    ]
    for manifest, field in cases:
        r = d.deploy_files("bad", {"index.js": HELLO}, manifest, expect=400)
        assert r.json()["field"] == field, (manifest, r.json())
        assert r.json()["error"] == "invalid_manifest"
    assert d.invoke("bad").status == 404  # nothing half-deployed
    assert not os.path.exists(os.path.join(d.data_dir, "functions", "bad")), "no empty dir"


def test_deploy_bad_name_and_body(d):
    r = d.deploy_files("Bad_Name", {"index.js": HELLO}, expect=400)
    assert r.json()["field"] == "name"
    r = d.admin("PUT", "/functions/x", None)
    assert r.status == 400
    r = d.request("PUT", "/_stoke/functions/x", body=b"{not json", auth=True)
    assert r.status == 400 and r.json()["error"] == "invalid_request"
    r = d.admin("PUT", "/functions/x", {"files": {"../../escape.js": "AAAA"}})
    assert r.status == 400 and r.json()["field"] == "files"
    r = d.admin("PUT", "/functions/x", {"files": {"a.js": "!!!notbase64"}})
    assert r.status == 400


def test_wrong_explicit_tier_is_400(d):
    r = d.deploy_files("py-in-isolate", {"handler.py": "def handler(e, c): return 'x'"},
                       {"tier": "isolate"}, expect=400)
    assert r.json()["field"] == "tier" and "python3" in r.json()["message"]


def test_syntax_error_is_400_with_position(d):
    r = d.deploy_files("broken", {"index.js": "export default {\n  fetch( {\n};\n"},
                       expect=400)
    msg = r.json()["message"]
    assert "line" in msg, msg


def test_redeploy_replaces_version(d):
    d.deploy_files("ver", {"index.js": "export default {fetch(){return new Response('one')}}"})
    assert d.invoke("ver").body == b"one"
    r = d.deploy_files("ver", {"index.js": "export default {fetch(){return new Response('two')}}"})
    assert d.invoke("ver").body == b"two"
    assert r.json()["version"] >= 2


def test_list_show_delete(d):
    d.deploy_files("listed", {"index.js": HELLO})
    names = [f["name"] for f in d.admin("GET", "/functions").json()["functions"]]
    assert "listed" in names
    info = d.admin("GET", "/functions/listed").json()
    assert info["runtime"] == "js" and info["limits"]["cpu_ms"] == 50
    assert d.admin("DELETE", "/functions/listed").json() == {"deleted": "listed"}
    assert d.invoke("listed").status == 404
    assert d.admin("DELETE", "/functions/listed").status == 404
    assert d.admin("GET", "/functions/listed").status == 404


def test_logs_capture_console(d):
    src = "export default {fetch(){console.log('hello from', 'logs'); return new Response('k')}}"
    d.deploy_files("logger", {"index.js": src})
    r = d.invoke("logger")
    assert r.status == 200
    rid = r.headers["x-stoke-request-id"]
    lines = d.admin("GET", "/functions/logger/logs").json()["lines"]
    assert any(l["msg"] == "hello from logs" and l["request_id"] == rid for l in lines), lines
    nxt = d.admin("GET", "/functions/logger/logs").json()["next"]
    assert d.admin("GET", "/functions/logger/logs?since=%d" % nxt).json()["lines"] == []


def test_rm_deletes_the_logs_too(d):
    src = "export default {fetch(){console.log('before rm'); return new Response('k')}}"
    d.deploy_files("gone", {"index.js": src})
    assert d.invoke("gone").status == 200
    lines = d.admin("GET", "/functions/gone/logs").json()["lines"]
    assert any(l["msg"] == "before rm" for l in lines), lines
    assert d.admin("DELETE", "/functions/gone").status == 200
    d.deploy_files("gone", {"index.js": src.replace("before rm", "after redeploy")})
    assert d.invoke("gone").status == 200
    msgs = [l["msg"] for l in d.admin("GET", "/functions/gone/logs").json()["lines"]]
    assert "after redeploy" in msgs and "before rm" not in msgs, msgs


def test_metrics_prometheus(d):
    d.deploy_files("counted", {"index.js": HELLO})
    for _ in range(3):
        d.invoke("counted")
    r = d.admin("GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'stoke_requests_total{function="counted",tier="isolate",code="2xx"} 3' in text
    assert 'stoke_request_duration_seconds_count{function="counted",tier="isolate"} 3' in text
    assert "# TYPE stoke_request_duration_seconds histogram" in text
    assert "stoke_process_resident_bytes" in text
    assert "\nstoke_inflight_requests 0\n" in text, "the scrape counts itself"
    # every metric family says what it is, whichever part of stoke adds it
    families = {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")}
    helped = {l.split()[2] for l in text.splitlines() if l.startswith("# HELP ")}
    assert families and families <= helped, sorted(families - helped)


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int([l for l in f if l.startswith("VmRSS:")][0].split()[1])


def test_names_deleted_or_never_deployed_cost_little_and_leave_metrics_alone():
    """Each name keeps an entry for good (a deleted function keeps its counters), and
    every entry used to hold a 90 KiB log ring and 48 metric lines: 200 functions
    deployed, called and removed, and 200 names whose first deploy failed, grew the
    daemon by about 36 MiB, and the failed names were listed in /_stoke/metrics."""
    ok = "export default { fetch: () => new Response('ok') };"
    with Daemon() as d:
        d.deploy_files("first", {"index.js": ok})
        d.invoke("first")
        before = _rss_kib(d.proc.pid)
        for i in range(200):
            d.deploy_files("gone%d" % i, {"index.js": ok})
            assert d.invoke("gone%d" % i).status == 200
            assert d.admin("DELETE", "/functions/gone%d" % i).status == 200
            d.deploy_files("never%d" % i, {"index.js": "export default {"}, expect=400)
        grown = _rss_kib(d.proc.pid) - before
        text = d.admin("GET", "/metrics").text
        assert 'stoke_requests_total{function="gone7",tier="none",code="2xx"} 1' in text
        assert 'function="never7"' not in text
        assert grown < 12 * 1024, "400 names grew the daemon by %d KiB" % grown
        d.deploy_files("gone7", {"index.js": ok})  # a name comes back with its logs
        d.invoke("gone7")
        assert d.admin("GET", "/functions/gone7/logs").json()["lines"] == []


def test_status(d):
    s = d.admin("GET", "/status").json()
    assert s["listen"] == "127.0.0.1:%d" % d.port and s["uptime_s"] >= 0


def test_access_log_has_request_ids(d):
    d.deploy_files("audited", {"index.js": HELLO})
    rid = d.invoke("audited").headers["x-stoke-request-id"]
    deadline = time.monotonic() + 5
    while rid not in d.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "access %s GET / 200" % rid in d.logs()


def test_restart_keeps_deployments():
    with Daemon() as d:
        d.deploy_files("kept", {"index.js": HELLO})
        token = d.token
        assert d.stop() == 0
        d.start()
        assert d.token == token
        r = d.invoke("kept", "/again")
        assert r.status == 200 and r.json()["path"] == "/again"


def settles(cond, timeout=5):
    """Whether cond() holds within timeout seconds (for what the daemon finishes off the
    request path)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_replaced_and_deleted_versions_leave_no_files():
    with Daemon() as d:
        fns = os.path.join(d.data_dir, "functions")
        d.deploy_files("vers", {"index.js": HELLO})
        assert d.invoke("vers").status == 200
        # Reading the logs must not keep the version alive (it once held a reference).
        assert d.admin("GET", "/functions/vers/logs").status == 200
        d.deploy_files("vers", {"index.js": HELLO})
        assert d.invoke("vers").status == 200
        # The worker that held v1 lets it go after the answer, on its own thread.
        assert settles(lambda: sorted(os.listdir(os.path.join(fns, "vers"))) == ["v2"])
        d.deploy_files("gone", {"index.js": HELLO})
        assert d.admin("DELETE", "/functions/gone").status == 200
        assert settles(lambda: not os.path.exists(os.path.join(fns, "gone")))
        assert d.stop() == 0
        # Leftovers of a daemon killed mid-way: an old version, a cut-short deploy and a
        # deleted function's directory; the start removes them and keeps the live one.
        for stray in ("vers/v1", "vers/v3.tmp", "ghost/v1"):
            os.makedirs(os.path.join(fns, stray, "sub"))
        d.start()
        assert sorted(os.listdir(os.path.join(fns, "vers"))) == ["v2"]
        assert not os.path.exists(os.path.join(fns, "ghost"))
        assert d.invoke("vers").status == 200


def test_graceful_shutdown_finishes_inflight():
    with Daemon() as d:
        d.deploy_files("slow", {"index.js": SLOW})
        results = []
        t = threading.Thread(target=lambda: results.append(d.invoke("slow")))
        t.start()
        time.sleep(0.2)
        d.proc.send_signal(signal.SIGTERM)
        t.join(15)
        assert results and results[0].status == 200 and results[0].body == b"slow done"
        assert d.proc.wait(15) == 0
        assert "stopped" in d.logs()


def test_json_logs():
    with Daemon("--log-json") as d:
        d.deploy_files("j", {"index.js": HELLO})
        d.invoke("j")
        d.stop()
        lines = [json.loads(l) for l in d.logs().splitlines() if l.startswith("{")]
        assert any(l.get("msg") == "access" and l.get("function") == "j" for l in lines)


def test_second_daemon_refuses_busy_port_and_data_dir(d):
    import subprocess
    import tempfile
    from harness import STOKE
    with tempfile.TemporaryDirectory() as tmp:
        busy_port = subprocess.run(
            [STOKE, "serve", "--listen", "127.0.0.1:%d" % d.port, "--data-dir", tmp],
            capture_output=True, text=True, timeout=20)
    assert busy_port.returncode != 0 and "cannot listen" in busy_port.stderr
    busy_dir = subprocess.run(
        [STOKE, "serve", "--listen", "127.0.0.1:%d" % free_port(), "--data-dir", d.data_dir],
        capture_output=True, text=True, timeout=20)
    assert busy_dir.returncode != 0 and "another stoke serve" in busy_dir.stderr
    assert d.request("GET", "/_stoke/health").status == 200


def test_usage_totals_equal_invocations(d):
    d.deploy_files("metered", {"index.js": HELLO}, {"limits": {"memory_mb": 256}})
    for _ in range(7):
        assert d.invoke("metered").status == 200
    u = d.admin("GET", "/usage?function=metered").json()
    rows = [r for r in u["usage"] if r["function"] == "metered"]
    assert len(rows) == 1 and rows[0]["invocations"] == 7, u
    assert rows[0]["tier"] == "isolate" and rows[0]["gb_s"] > 0
    assert u["prices"]["lambda"]["per_million_requests"] == 0.20
    assert u["cost_lambda_usd"] > 0 and u["cost_workers_usd"] > 0


def test_queue_overflow_is_429_with_retry_after(d):
    d.deploy_files("narrow", {"index.js": SLOW},
                   {"limits": {"max_instances": 1, "concurrency": 1, "queue": 0}})
    results = []
    threads = [threading.Thread(target=lambda: results.append(d.invoke("narrow")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(r.status for r in results)
    assert statuses.count(200) >= 1 and 429 in statuses, statuses
    busy = [r for r in results if r.status == 429][0]
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"] == "too_many_requests"
    assert "limits.max_instances" in busy.json()["message"]  # says what to raise
    assert d.invoke("narrow").status == 200  # and it recovers


def test_set_cookie_from_headers_object(d):
    src = """export default { fetch() {
      const h = new Headers({"content-type": "text/plain"});
      h.append("set-cookie", "a=1; Path=/");
      h.append("Set-Cookie", "b=2");
      return new Response("ok", { headers: h });
    } };"""
    d.deploy_files("cookies", {"index.js": src})
    out = raw(d, b"GET /fn/cookies/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = out.split(b"\r\n\r\n")[0].lower()
    assert head.count(b"\r\nset-cookie: ") == 2, head
    assert b"set-cookie: a=1; path=/" in head and b"set-cookie: b=2" in head


def test_host_out_of_memory_is_503_with_retry_after():
    # An operator floor above what any machine has: every function request is refused.
    with Daemon(env={"STOKE_MIN_FREE_MB": str(1 << 40)}) as d:
        d.deploy_files("mem", {"index.js": HELLO})
        deadline = time.monotonic() + 5
        r = d.invoke("mem")
        while r.status != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
            r = d.invoke("mem")
        assert r.status == 503 and r.headers["retry-after"] == "5", r
        assert r.json()["error"] == "host_out_of_memory"
        h = d.request("GET", "/_stoke/health")
        assert h.status == 200  # alive, and it says why functions are refused
        assert h.json()["accepting"] is False and h.json()["reason"] == "host_out_of_memory"
        assert "STOKE_MIN_FREE_MB" in h.json()["message"], h.json()
        assert h.json()["min_free_mb"] == 1 << 40 and h.json()["mem_available_mb"] > 0
        st = d.cli("status")
        assert st.returncode == 0 and "NOT ACCEPTING function requests" in st.stdout, st
        assert json.loads(d.cli("status", "--json").stdout)["accepting"] is False


def test_load_at_low_and_high_concurrency_keeps_connections(d):
    """A regression test for loop threads sharing h2o's thread-local buffer lists (the
    daemon's heap got corrupted within a second at two connections)."""
    import shutil
    import subprocess
    from harness import Skip
    if not shutil.which("wrk"):
        raise Skip("wrk is not installed (scripts/setup installs it)")
    d.deploy_files("loaded", {"index.js": HELLO})
    for conns in (2, 8, 64):
        out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d2s", d.url + "/fn/loaded/"],
                             capture_output=True, text=True, timeout=30).stdout
        assert "Socket errors" not in out and "Non-2xx" not in out, out
        assert d.proc.poll() is None, d.logs()[-2000:]
    assert d.request("GET", "/_stoke/health").status == 200


def test_admin_wrong_method_is_405(d):
    r = d.admin("POST", "/functions")
    assert r.status == 405 and r.json()["error"] == "method_not_allowed", r
    assert d.admin("DELETE", "/metrics").status == 405
    assert d.admin("GET", "/nothing-here").status == 404


def test_listen_is_validated_before_anything_starts():
    import subprocess
    import tempfile
    from harness import STOKE
    bad = {"127.0.0.1:99999": "1 to 65535", "127.0.0.1:0": "1 to 65535",
           "127.0.0.1": "has no port", "localhost": "has no port",
           ":8080": "names no host", "[::1]8080": "[ADDRESS]:PORT",
           "127.0.0.1:http": "1 to 65535"}
    with tempfile.TemporaryDirectory(prefix="polish-listen-") as tmp:
        for listen, why in bad.items():
            r = subprocess.run([STOKE, "serve", "--listen", listen, "--data-dir", tmp],
                               capture_output=True, text=True, timeout=20)
            assert r.returncode == 2 and why in r.stderr, (listen, r.returncode, r.stderr)
            assert "Invalid argument" not in r.stderr
        assert not os.path.exists(os.path.join(tmp, "token"))  # nothing was started


def test_listen_resolves_localhost():
    d = Daemon()
    d.args = ["--listen", "localhost:%d" % d.port]  # the later --listen wins
    with d:
        assert d.request("GET", "/_stoke/health").status == 200
        assert d.admin("GET", "/status").json()["listen"] == "localhost:%d" % d.port

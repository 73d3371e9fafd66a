"""The stoke command against the real daemon: every client verb end to end, its exit
codes (0 ok, 1 the daemon or function said no, 2 usage, 3 no daemon), --json output,
and `stoke advise` choosing a tier for a Python and a JavaScript file."""
import json
import os
import socket
import subprocess
import time

from harness import STOKE, Daemon, free_port

HELLO = """export default {
  fetch(request) {
    console.log("cli saw", new URL(request.url).pathname);
    return new Response("hello from cli " + new URL(request.url).pathname);
  }
};
"""

HANDLER = """def handler(event, context):
    return {"statusCode": 200, "body": "py"}
"""


def write(d, name, text):
    path = os.path.join(d.tmp.name, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def deployed(d, name):
    """Deploys HELLO as name through the CLI."""
    return ok(d.cli("deploy", write(d, name + ".js", HELLO), "--name", name))


def test_deploy_prints_version_tier_and_url(d):
    r = deployed(d, "cli-deploy")
    assert r.stdout.startswith("deployed cli-deploy v1 (isolate, js) -> "), r.stdout
    assert "%s/fn/cli-deploy/" % d.url in r.stdout
    doc = json.loads(ok(d.cli("deploy", write(d, "x.js", HELLO), "--name", "cli-deploy",
                              "--json")).stdout)
    assert doc["name"] == "cli-deploy" and doc["version"] == 2 and doc["tier"] == "isolate"


def test_deploy_errors(d):
    r = d.cli("deploy", os.path.join(d.tmp.name, "no-such-file.js"))
    assert r.returncode == 2 and "stoke:" in r.stderr
    # A manifest, name or entry the daemon refuses is unusable local input: 2.
    r = d.cli("deploy", write(d, "y.js", HELLO), "--name", "Bad_Name")
    assert r.returncode == 2 and "(field: name)" in r.stderr, r.stderr
    os.makedirs(os.path.join(d.tmp.name, "named"), exist_ok=True)
    write(d, "named/index.js", HELLO)
    write(d, "named/stoke.json", '{"name": "Bad_Name"}')
    r = d.cli("deploy", os.path.join(d.tmp.name, "named"))  # the hint points at the file
    assert r.returncode == 2 and 'set "name" to "bad-name" in stoke.json' in r.stderr, \
        r.stderr
    r = d.cli("deploy", write(d, "z.js", "export default {\n  fetch( {\n};\n"))
    assert r.returncode == 2 and "(field: entry)" in r.stderr, r.stderr
    assert d.cli("deploy").returncode == 2


def test_json_errors(d):
    """With --json an error is one JSON object on stdout too; the exit codes stay."""
    fn = os.path.join(d.tmp.name, "typo-fn")
    os.makedirs(fn, exist_ok=True)
    write(d, "typo-fn/index.js", HELLO)
    write(d, "typo-fn/stoke.json", '{"limts": {"memory_mb": 64}}')
    r = d.cli("deploy", fn, "--json")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["error"] == "invalid_manifest" and doc["field"] == "limts", doc
    assert doc["status"] == 400 and "limits" in doc["message"], doc
    assert "unknown field limts" in r.stderr and "(field: limts)" not in r.stderr, r.stderr
    r = d.cli("show", "cli-json-nothing", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == 404, r.stdout
    # One line: it also ends a stream of JSON lines.
    r = d.cli("logs", "cli-json-nothing", "--json")
    assert r.returncode == 1 and r.stdout.count("\n") == 1, r.stdout
    assert json.loads(r.stdout)["status"] == 404, r.stdout
    r = d.cli("show", "x", "--json", "--url", "http://127.0.0.1:%d" % free_port())
    assert r.returncode == 3 and json.loads(r.stdout)["error"] == "unreachable", r.stdout
    assert "cannot reach the daemon" in r.stderr


def test_unknown_extension_names_the_runtimes(d):
    """readme.txt is not taken for a native program: the extension is named, with the
    ones stoke knows and --runtime; a file without an extension still is a program."""
    r = d.cli("deploy", write(d, "readme.txt", "hello\n"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'cannot tell the runtime of readme.txt from its extension ".txt"' in r.stderr
    assert ".py (python3)" in r.stderr and "--runtime" in r.stderr, r.stderr
    assert "ELF" not in r.stderr, r.stderr
    assert d.cli("show", "readme").returncode == 1
    r = d.cli("deploy", write(d, "readme.txt", HELLO), "--runtime", "js", "--tier", "isolate")
    assert "cannot tell the runtime" not in r.stderr, r.stderr
    # An entry that is not there is the daemon's to name, whatever its extension.
    os.makedirs(os.path.join(d.tmp.name, "noentry"), exist_ok=True)
    write(d, "noentry/index.js", HELLO)
    write(d, "noentry/stoke.json", '{"entry": "gone.txt"}')
    r = d.cli("deploy", os.path.join(d.tmp.name, "noentry"))
    assert r.returncode == 2 and "cannot tell the runtime" not in r.stderr, r.stderr
    assert "(field: entry)" in r.stderr, r.stderr
    r = d.cli("deploy", write(d, "prog", "not a program\n"))
    assert r.returncode != 0 and "cannot tell the runtime" not in r.stderr, r.stderr


def test_missing_entry_names_the_source_file(d):
    """A directory whose one source file is not a default entry (AWS's
    lambda_function.py) is refused with that file as the "entry" to set; a mistyped
    entry gets the file it was probably meant to be."""
    os.makedirs(os.path.join(d.tmp.name, "lambda-dir"), exist_ok=True)
    write(d, "lambda-dir/lambda_function.py", HANDLER)
    r = d.cli("deploy", os.path.join(d.tmp.name, "lambda-dir"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "(lambda_function.py is the only source file here)" in r.stderr, r.stderr
    assert 'hint: set "entry" to "lambda_function.py" in stoke.json' in r.stderr, r.stderr
    write(d, "lambda-dir/stoke.json", '{"entry": "lambda_functon.py"}')
    r = d.cli("deploy", os.path.join(d.tmp.name, "lambda-dir"), "--json")
    assert r.returncode == 2, (r.returncode, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["field"] == "entry" and doc["suggestion"] == "lambda_function.py", doc
    assert "(did you mean lambda_function.py?)" in doc["message"], doc
    write(d, "lambda-dir/stoke.json", '{"entry": "lambda_function.py"}')
    ok(d.cli("deploy", os.path.join(d.tmp.name, "lambda-dir")))
    assert ok(d.cli("invoke", "lambda-dir")).stdout == "py"


def test_invoke(d):
    deployed(d, "cli-invoke")
    r = ok(d.cli("invoke", "cli-invoke", "/a/b"))
    assert r.stdout == "hello from cli /a/b"
    doc = json.loads(ok(d.cli("invoke", "cli-invoke", "--json")).stdout)
    assert doc["status"] == 200 and doc["body"] == "hello from cli /"
    r = d.cli("invoke", "cli-nothing-here")
    assert r.returncode == 1


def test_unknown_name_suggests_a_deployed_one(d):
    """show, rm and logs of a mistyped name name the function it probably was; a name
    close to nothing deployed gets no guess."""
    deployed(d, "cli-typo-target")
    for verb in ("show", "logs", "rm"):
        r = d.cli(verb, "cli-typo-targt")
        assert r.returncode == 1, (verb, r.returncode, r.stderr)
        assert "no function named cli-typo-targt (did you mean cli-typo-target?)" in \
            r.stderr, (verb, r.stderr)
    r = d.cli("show", "cli-nothing-close-to-this", "--json")
    assert r.returncode == 1 and "did you mean" not in r.stdout, r.stdout
    assert json.loads(r.stdout)["message"] == "no function named cli-nothing-close-to-this"
    ok(d.cli("rm", "cli-typo-target"))


def test_ls_and_show(d):
    deployed(d, "cli-listed")
    r = ok(d.cli("ls"))
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "TIER", "RUNTIME", "ENTRY", "DEPLOYED"]
    assert any(row.split()[:3] == ["cli-listed", "1", "isolate"] for row in rows), r.stdout
    names = [f["name"] for f in json.loads(ok(d.cli("ls", "--json")).stdout)["functions"]]
    assert "cli-listed" in names
    r = ok(d.cli("show", "cli-listed"))
    assert "name: cli-listed" in r.stdout and "tier: isolate" in r.stdout
    assert "\n  queue: 1024\n" in r.stdout, r.stdout
    assert json.loads(ok(d.cli("show", "cli-listed", "--json")).stdout)["runtime"] == "js"
    r = d.cli("show", "cli-never-deployed")
    assert r.returncode == 1 and "cli-never-deployed" in r.stderr


def test_logs(d):
    deployed(d, "cli-logs")
    ok(d.cli("invoke", "cli-logs", "/logged"))
    r = ok(d.cli("logs", "cli-logs"))
    assert "stdout cli saw /logged" in r.stdout, r.stdout
    lines = [json.loads(l) for l in ok(d.cli("logs", "cli-logs", "--json")).stdout.split("\n")
             if l]
    assert any(l["msg"] == "cli saw /logged" for l in lines), lines


def test_rm(d):
    deployed(d, "cli-gone")
    r = ok(d.cli("rm", "cli-gone"))
    assert "cli-gone" in r.stdout
    assert d.cli("show", "cli-gone").returncode == 1
    assert d.cli("invoke", "cli-gone").returncode == 1
    assert d.cli("rm", "cli-gone").returncode == 1


def test_status(d):
    r = ok(d.cli("status"))
    assert r.stdout.startswith("daemon: %s\n" % d.url) and "uptime: " in r.stdout
    assert r.stdout.count("uptime") == 1, r.stdout
    assert isinstance(json.loads(ok(d.cli("status", "--json")).stdout), dict)
    assert d.cli("status", "extra").returncode == 2


def test_usage_table_and_json(d):
    deployed(d, "cli-usage")
    for _ in range(3):
        ok(d.cli("invoke", "cli-usage"))
    r = ok(d.cli("usage", "cli-usage"))
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["FUNCTION", "TIER", "INVOCATIONS", "COLD", "ERRORS"]
    row = next(l.split() for l in lines if l.startswith("cli-usage "))
    assert row[1] == "isolate" and row[2] == "3" and row[3] == "1", r.stdout
    assert any(l.startswith("total ") for l in lines)
    assert "AWS Lambda as of 2025-01-01" in r.stdout and "Cloudflare Workers as of" in r.stdout
    doc = json.loads(ok(d.cli("usage", "cli-usage", "--json")).stdout)
    assert [u["function"] for u in doc["usage"]] == ["cli-usage"]
    assert doc["usage"][0]["invocations"] == 3 and doc["prices"]["lambda"]["per_gb_s"] > 0
    assert doc["cost_lambda_usd"] > 0 and doc["cost_workers_usd"] > 0


def test_usage_since(d):
    deployed(d, "cli-since")
    ok(d.cli("invoke", "cli-since"))
    for when in ("1h", "7d", "30m", str(int(time.time()) - 600), "2020-01-01"):
        doc = json.loads(ok(d.cli("usage", "cli-since", "--since", when, "--json")).stdout)
        assert doc["usage"] and doc["usage"][0]["invocations"] == 1, (when, doc)
    r = ok(d.cli("usage", "cli-since", "--since", "2999-01-01"))
    assert "since 2999-01-01T00:00:00Z" in r.stdout and "no invocations" in r.stdout
    r = d.cli("usage", "--since", "last tuesday")
    assert r.returncode == 2 and "--since" in r.stderr


def test_advise_python_is_vm(d):
    r = ok(d.cli("advise", write(d, "handler.py", HANDLER)))
    lines = r.stdout.splitlines()
    assert lines[:3] == ["tier: vm", "runtime: python3", "entry: handler.py"], r.stdout
    bullets = [l for l in lines[3:] if l.startswith("  - ")]
    assert bullets and len(bullets) == len(lines) - 3, r.stdout
    doc = json.loads(ok(d.cli("advise", write(d, "handler.py", HANDLER), "--json")).stdout)
    assert doc["tier"] == "vm" and doc["reasons"]
    # Advice deploys nothing.
    assert d.cli("show", "handler").returncode == 1


def test_advise_js_is_isolate(d):
    r = ok(d.cli("advise", write(d, "edge.js", HELLO)))
    assert r.stdout.startswith("tier: isolate\nruntime: js\nentry: edge.js\n"), r.stdout
    assert "\n  - " in r.stdout
    doc = json.loads(ok(d.cli("advise", write(d, "edge.js", HELLO), "--json")).stdout)
    assert doc["tier"] == "isolate" and doc["entry"] == "edge.js"


def test_advise_refusal_names_the_field(d):
    r = d.cli("advise", write(d, "odd.js", HELLO), "--runtime", "python")
    assert r.returncode == 2 and "(field: runtime)" in r.stderr, r.stderr
    assert "one of js, python3, native, not \"python\" (did you mean python3?)" in r.stderr
    assert d.cli("advise", write(d, "odd.js", HELLO), "--tier", "fast").returncode == 2
    # JavaScript asked onto the micro-VM tier: the tier is what to change.
    r = d.cli("advise", write(d, "odd.js", HELLO), "--tier", "vm")
    assert r.returncode == 2 and "(field: tier)" in r.stderr, r.stderr


def test_bad_token_exits_1(d):
    for args in (("ls",), ("status",), ("usage",), ("show", "x"), ("rm", "x"),
                 ("advise", write(d, "t.js", HELLO)), ("logs", "x")):
        r = d.cli(*args, "--token", "not-the-token")
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert r.stderr.startswith("stoke: wrong token"), r.stderr
        assert "came from --token" in r.stderr, r.stderr


def test_daemon_down_exits_3(d):
    dead = "http://127.0.0.1:%d" % free_port()
    for args in (("ls",), ("status",), ("usage",), ("invoke", "x"), ("logs", "x"),
                 ("deploy", write(d, "down.js", HELLO)), ("advise", write(d, "down.js", HELLO))):
        r = d.cli(*args, "--url", dead)
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        assert "cannot reach the daemon at %s" % dead in r.stderr, r.stderr


def test_401_says_which_token_was_sent(d):
    """Missing, wrong and another data directory's token: each 401 says what was sent."""
    empty = os.path.join(d.tmp.name, "no-token-here")
    os.makedirs(empty, exist_ok=True)
    r = d.cli("ls", "--data-dir", empty)
    assert r.returncode == 1, r
    assert "stoke: no token: admin requests need" in r.stderr, r.stderr
    assert "no token was sent" in r.stderr and os.path.join(empty, "token") in r.stderr
    other = os.path.join(d.tmp.name, "other-data")
    os.makedirs(other, exist_ok=True)
    with open(os.path.join(other, "token"), "w") as f:
        f.write("f" * 64 + "\n")
    r = d.cli("--data-dir", other, "status")
    assert r.returncode == 1 and "wrong token" in r.stderr, r.stderr
    assert "came from %s" % os.path.join(other, "token") in r.stderr, r.stderr
    r = d.cli("ls", "--token", "nope")
    assert r.returncode == 1 and "came from --token" in r.stderr, r.stderr
    env_run = subprocess.run([STOKE, "ls"], capture_output=True, text=True, timeout=30,
                             env=dict(d.env, STOKE_URL=d.url, STOKE_TOKEN="nope"))
    assert env_run.returncode == 1 and "came from $STOKE_TOKEN" in env_run.stderr


def announce(d, method, path, length, token=None):
    """Sends only a request head announcing length bytes; returns (status, JSON body)."""
    head = "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (method, path, length)
    if token:
        head += "Authorization: Bearer %s\r\n" % token
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall((head + "\r\n").encode())
        out = b""
        while b"\r\n\r\n" not in out or len(out.split(b"\r\n\r\n", 1)[1]) < int(
                out.lower().split(b"content-length: ")[1].split(b"\r\n")[0]):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, body = out.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_deploy_over_the_limit_is_refused_with_the_limit():
    """Just over the limit and far over it, from the CLI and over plain HTTP: every
    413 is stoke's JSON naming --max-deploy; a big tree is refused before upload."""
    from harness import Daemon
    with Daemon("--max-deploy", "100K", "--max-body", "50K") as d:
        small = os.path.join(d.tmp.name, "small")
        os.makedirs(small)
        with open(os.path.join(small, "index.js"), "w") as f:
            f.write(HELLO + "//" + "x" * 120000 + "\n")
        r = d.cli("deploy", small)
        assert r.returncode == 1, r
        assert "deploy limit of 102400 bytes (stoke serve --max-deploy" in r.stderr, r.stderr
        big = os.path.join(d.tmp.name, "big")
        os.makedirs(big)
        for i in range(3):
            with open(os.path.join(big, "blob%d.bin" % i), "wb") as f:
                f.write(os.urandom(1 << 20))
        r = d.cli("deploy", big)
        assert r.returncode == 1, r
        assert "too big to deploy" in r.stderr and "--max-deploy" in r.stderr, r.stderr
        assert "accepts 0.1 MiB" in r.stderr, r.stderr
        # Just over, by a few bytes, and far over: h2o refuses from Content-Length
        # alone, before the body is sent; the answer is the same JSON.
        for n in (102400 + 2, 102400 + 100, 60 << 20):
            status, doc = announce(d, "PUT", "/_stoke/functions/over", n, d.token)
            assert status == 413 and doc["error"] == "deploy_too_large", (n, doc)
            assert "--max-deploy" in doc["message"] and "102400" in doc["message"], doc
        for n in (102400 + 2, 60 << 20):
            status, doc = announce(d, "POST", "/fn/nothing/", n)
            assert status == 413 and doc["error"] == "body_too_large", (n, doc)
            assert "--max-body" in doc["message"] and "51200" in doc["message"], doc
        d.deploy_files("tiny", {"index.js": HELLO})
        r = d.request("POST", "/fn/tiny/", body=b"y" * 51201)  # read, then refused
        assert r.status == 413 and "--max-body" in r.json()["message"], r
        assert d.cli("status", "--json").returncode == 0
        doc = json.loads(d.cli("status", "--json").stdout)
        assert doc["max_deploy_bytes"] == 102400 and doc["max_body_bytes"] == 51200
        # the big tree never reached the daemon: no PUT of it in the access log
        assert "PUT /_stoke/functions/big" not in d.logs(), d.logs()[-2000:]


def test_invalid_derived_name_suggests_one(d):
    r = d.cli("deploy", write(d, "my_handler.py", HANDLER))
    assert r.returncode != 0, r
    assert '"my_handler" is not a valid function name' in r.stderr, r.stderr
    assert "stoke: hint: use --name my-handler\n" in r.stderr, r.stderr
    # Judged and fixed up as typed, not as percent-encoded into the URL (My%20Fn).
    r = d.cli("deploy", write(d, "spaced.js", HELLO), "--name", "My Fn")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert '"My Fn" is not a valid function name' in r.stderr, r.stderr
    assert '("my-fn" is)' in r.stderr and "hint: use --name my-fn\n" in r.stderr, r.stderr
    assert d.cli("show", "my-fn").returncode == 1
    r = d.admin("PUT", "/functions/My_App", {"files": {"index.js": "AAAA"}})
    assert r.status == 400 and r.json()["suggestion"] == "my-app", r


def test_invoke_ends_the_line_on_a_terminal(d):
    """A body without a final newline gets one on a terminal, and only there."""
    import pty
    deployed(d, "cli-tty")
    assert ok(d.cli("invoke", "cli-tty", "/x")).stdout == "hello from cli /x"
    primary, secondary = pty.openpty()
    try:
        env = dict(d.env, STOKE_URL=d.url)
        p = subprocess.run([STOKE, "invoke", "cli-tty", "/x"], stdout=secondary,
                           stderr=subprocess.PIPE, env=env, timeout=30)
        assert p.returncode == 0, p.stderr
        os.close(secondary)
        secondary = -1
        out = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert out == b"hello from cli /x\r\n", out


def test_serve_says_which_option_fixes_the_address(d):
    """--listen 8080 asks for HOST:PORT; an address in use, or a data directory another
    daemon serves, names what to change; each exits without serving."""
    r = d.cli("serve", "--listen", "8080", timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "'8080' is a port alone: write HOST:PORT, e.g. 127.0.0.1:8080" in r.stderr
    other = os.path.join(d.tmp.name, "serve-other-data")
    r = d.cli("serve", "--listen", "127.0.0.1:%d" % d.port, "--data-dir", other,
              timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "cannot listen on 127.0.0.1:%d: Address already in use" % d.port in r.stderr
    assert "choose another address with --listen HOST:PORT" in r.stderr, r.stderr
    r = d.cli("serve", "--listen", "127.0.0.1:%d" % free_port(), "--data-dir", d.data_dir,
              timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "already serves it: use that one, stop it, or pass another --data-dir" \
        in r.stderr, r.stderr
    assert d.cli("status").returncode == 0


def test_deploy_follows_symbolic_links(d):
    """A file linked in from elsewhere is sent (the user's `ln -s /elsewhere/lib.js`);
    .git is not, and the deploy says so; a link to nothing is an error naming it."""
    root = os.path.join(d.tmp.name, "linked")
    fn = os.path.join(root, "fn")
    os.makedirs(os.path.join(root, "elsewhere"))
    os.makedirs(os.path.join(fn, ".git"))
    write(d, "linked/elsewhere/lib.js", "export const who = 'linked lib';\n")
    write(d, "linked/fn/.git/HEAD", "ref: refs/heads/main\n")
    write(d, "linked/fn/index.js", 'import { who } from "./lib.js";\n'
          "export default { fetch() { return new Response('hi from ' + who); } };\n")
    os.symlink(os.path.join(root, "elsewhere", "lib.js"), os.path.join(fn, "lib.js"))
    r = ok(d.cli("deploy", fn, "--name", "cli-linked"))
    assert "stoke: not uploaded: .git (version control)\n" in r.stderr, r.stderr
    assert ok(d.cli("invoke", "cli-linked")).stdout == "hi from linked lib"
    os.symlink("/nonexistent/stoke-e2e/lib2.js", os.path.join(fn, "lib2.js"))
    r = d.cli("deploy", fn, "--name", "cli-linked")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "%s/lib2.js is a symbolic link to /nonexistent/stoke-e2e/lib2.js, which does " \
        "not exist" % fn in r.stderr, r.stderr


def test_gc_on_a_daemon_that_never_snapshotted(d):
    """`stoke gc` before any micro-VM snapshot exists frees nothing, and succeeds (the
    snapshot directory is made at the first snapshot)."""
    with Daemon() as sd:
        r = sd.cli("gc")
        assert r.returncode == 0 and "freed 0.0 MiB" in r.stdout, r


def test_usage_of_a_typo_suggests_the_deployed_name(d):
    """Usage history outlives deletions, so `stoke usage NAME` with nothing recorded
    stays a success; for a name nothing is deployed under it also says which deployed
    function was probably meant."""
    d.deploy_files("counted", {"index.js": HELLO})
    r = d.cli("usage", "countde")
    assert r.returncode == 0 and "no invocations recorded for countde" in r.stdout, r
    assert "did you mean counted?" in r.stderr, r

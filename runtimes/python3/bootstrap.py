"""stoke's Python runtime: serves invocations of one handler over the channel.

Runs inside the process VM as `python3 -S /var/runtime/bootstrap.py`. It imports the
user's module from /var/task once, then loops: read a request frame from descriptor 3,
call handler(event, context) AWS Lambda style, write a response frame. One VM serves
many requests warm. The frame format is documented in docs/channel-abi.md.

Every module imported here is paid for at each cold start (a few hundred system calls
for urllib.parse or base64, about 0.1 ms each in the VM), so the bootstrap imports only
json and builtins and does the little query parsing and base64 it needs itself.
"""

import binascii
import gc
import json
import os
import sys
import time

CHANNEL_FD = int(os.environ.get("STOKE_CHANNEL_FD", "3"))
TASK_DIR = "/var/task"
HDR_SIZE = 8
FRAME_VERSION = 1
FRAME_REQUEST = 1
FRAME_RESPONSE = 2
FRAME_LOAD = 4

# Imported before a runtime snapshot (STOKE_SNAPSHOT=runtime): the runtime layer is
# built once per runtime and shared by every function, so modules most handlers use
# are paid for there instead of in each function's layer (their pages stored once).
RUNTIME_PRELOAD = ("base64", "binascii", "collections", "datetime", "functools",
                   "hashlib", "json", "math", "random", "re", "struct", "time",
                   "traceback", "uuid")


# Bytes read from the channel but not yet consumed. Reading in large chunks makes a
# request one system call (each costs about 0.1 ms in the VM) instead of two.
_inbuf = bytearray()


def fill(n):
    """Makes _inbuf hold at least n bytes; False at end of file."""
    while len(_inbuf) < n:
        b = os.read(CHANNEL_FD, max(65536, n - len(_inbuf)))
        if not b:
            return False
        _inbuf.extend(b)
    return True


def read_frame():
    if not fill(HDR_SIZE):
        return None, None
    length = int.from_bytes(_inbuf[0:4], "little")
    if not fill(HDR_SIZE + length):
        return None, None
    ftype = _inbuf[4]
    payload = bytes(_inbuf[HDR_SIZE:HDR_SIZE + length])
    del _inbuf[:HDR_SIZE + length]
    return ftype, payload


def write_frame(ftype, payload):
    hdr = len(payload).to_bytes(4, "little") + bytes([ftype, FRAME_VERSION, 0, 0])
    data = memoryview(hdr + payload)
    while data:
        n = os.write(CHANNEL_FD, data)
        data = data[n:]


class Context:
    """The handler's second argument, shaped like AWS Lambda's."""

    def __init__(self, req):
        self.function_name = req.get("function", "")
        self.function_version = str(req.get("version", ""))
        self.request_id = req.get("request_id", "")
        self.aws_request_id = self.request_id
        self.memory_limit_mb = int(req.get("memory_limit_mb", 0))
        self.memory_limit_in_mb = self.memory_limit_mb
        self._deadline_ms = int(req.get("deadline_ms", 0))

    def get_remaining_time_in_millis(self):
        if not self._deadline_ms:
            return 0
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _unquote_plus(s):
    """Percent-decoding as urllib.parse.unquote_plus does it, for query strings."""
    s = s.replace("+", " ")
    if "%" not in s:
        return s
    parts = s.split("%")
    out = bytearray(parts[0].encode())
    for part in parts[1:]:
        try:
            out += bytes([int(part[:2], 16)]) + part[2:].encode()
        except ValueError:
            out += b"%" + part.encode()
    return out.decode("utf-8", "replace")


def parse_query(query):
    """{name: [values]} like urllib.parse.parse_qs(query, keep_blank_values=True)."""
    out = {}
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        out.setdefault(_unquote_plus(name), []).append(_unquote_plus(value))
    return out


def b64encode(data):
    return binascii.b2a_base64(data, newline=False).decode()


def make_event(req):
    headers = {}
    for name, value in req.get("headers", []):
        name = name.lower()
        headers[name] = headers[name] + ", " + value if name in headers else value
    query = req.get("query", "")
    return {
        "method": req.get("method", "GET"),
        "path": req.get("path", "/"),
        "query": parse_query(query),
        "rawQuery": query,
        "url": req.get("url", ""),
        "headers": headers,
        "body": req.get("body", ""),
        "isBase64Encoded": req.get("body_encoding") == "base64",
    }


def as_response(result):
    """Turns what the handler returned into the response frame's fields."""
    if isinstance(result, dict) and ("statusCode" in result or "body" in result):
        body = result.get("body", "")
        b64 = bool(result.get("isBase64Encoded", False))
        if isinstance(body, (bytes, bytearray)):
            body, b64 = b64encode(body), True
        elif body is None:
            body = ""
        elif not isinstance(body, str):
            body = json.dumps(body)
        if not b64 and "\x00" in body:
            # The channel's JSON strings carry no NUL (docs/channel-abi.md): send bytes.
            body, b64 = b64encode(body.encode("utf-8", "surrogatepass")), True
        # [name, value] pairs: API Gateway's multiValueHeaders and cookies repeat names.
        headers = [[str(k), str(v)] for k, v in (result.get("headers") or {}).items()]
        for k, values in (result.get("multiValueHeaders") or {}).items():
            headers += [[str(k), str(v)] for v in values]
        headers += [["set-cookie", str(c)] for c in result.get("cookies") or []]
        return {"statusCode": int(result.get("statusCode", 200)), "headers": headers,
                "body": body, "isBase64Encoded": b64}
    if isinstance(result, (bytes, bytearray)):
        return {"statusCode": 200, "headers": {}, "isBase64Encoded": True,
                "body": b64encode(result)}
    if isinstance(result, str):
        return {"statusCode": 200, "headers": {"content-type": "text/plain; charset=utf-8"},
                "body": result, "isBase64Encoded": False}
    if result is None:
        return {"statusCode": 200, "headers": {}, "body": "", "isBase64Encoded": False}
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(result), "isBase64Encoded": False}


def handler_error(req, exc):
    import traceback  # only on the error path: it costs a few hundred system calls
    traceback.print_exception(exc, file=sys.stderr)
    # The traceback (above) is in the function's logs; the caller is not the owner and
    # gets the exception's type only: its text can hold the function's internals.
    return error_response(req, "handler_error", f"the handler raised {type(exc).__name__}; "
                          "the traceback is in the function's logs")


def error_response(req, kind, message):
    """stoke's JSON error answer (500), pointing the owner at the function's logs."""
    body = json.dumps({"error": kind, "message": f"{message}: stoke logs "
                       f"{req.get('function', '')}", "request_id": req.get("request_id", "")},
                      separators=(",", ":")) + "\n"
    return {"statusCode": 500, "headers": {"content-type": "application/json"},
            "body": body, "isBase64Encoded": False}


def return_error(req, result, exc):
    """The handler returned something that cannot be sent (a set, an object...)."""
    kind = type(result).__name__
    print(f"stoke: the handler returned a {kind}, which cannot be sent: "
          f"{type(exc).__name__}: {exc}", file=sys.stderr)
    return error_response(req, "bad_response", f"the handler returned a {kind}, which "
                          "cannot be sent as a response; the reason is in the function's logs")


def respond(handler, req):
    """The response frame's fields for one request: the handler's failure, or a return
    value that cannot be sent, is the caller's 500."""
    try:
        result = handler(make_event(req), Context(req))
    except Exception as exc:
        return handler_error(req, exc)
    try:
        return as_response(result)
    except Exception as exc:
        return return_error(req, result, exc)


def load_handler():
    os.chdir(TASK_DIR)
    entry = os.environ.get("STOKE_ENTRY", "handler.py")
    name = os.environ.get("STOKE_HANDLER", "handler")
    path = os.path.join(TASK_DIR, entry)
    modname, ext = os.path.splitext(os.path.basename(entry))
    if ext != ".py":
        raise SystemExit(f"stoke: entry {entry} is not a .py file")
    # The plain import system (no importlib.util): the entry's directory goes first on
    # sys.path, so its sibling modules import too.
    sys.path.insert(0, os.path.dirname(path))
    try:
        module = __import__(modname)
    except Exception as exc:
        # The deploy's error carries the end of stderr: the user's frames, not ours.
        import traceback
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
        raise SystemExit(1)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SystemExit(f"stoke: {entry} defines no callable '{name}'")
    check_arity(entry, name, fn)
    return module, fn


def check_arity(entry, name, fn):
    """A handler that cannot take (event, context) would fail every request: say so at
    deploy. Only plain functions are checked (a class instance's __call__ is not)."""
    code = getattr(fn, "__code__", None)
    if code is None or code.co_flags & 0x04:  # CO_VARARGS: *args takes anything
        return
    takes = code.co_argcount
    needs = takes - len(getattr(fn, "__defaults__", None) or ())
    if takes < 2 or needs > 2:
        args = ", ".join(code.co_varnames[:takes])
        raise SystemExit(f"stoke: {entry}: {name}({args}) cannot be called as "
                         f"{name}(event, context), which is how stoke calls it")


def call_hook(module, name):
    """Calls module.<name>() when the user module defines it."""
    hook = getattr(module, name, None)
    if callable(hook):
        hook()


def after_restore(module):
    """Makes this instance unique again: every VM restored from one snapshot starts
    with the same memory, so seeds kept in it must be drawn anew (os.urandom and
    uuid4 ask the host on each call and need nothing). Runs in the VM the snapshot was
    taken in too, where it is merely redundant."""
    rnd = sys.modules.get("random")
    if rnd is not None:
        rnd.seed()
    call_hook(module, "after_restore")


def serve(module, handler):
    # With STOKE_SNAPSHOT=1 the VMM snapshots this process at its first read of the
    # channel; the user module may drop what must not be shared by restored copies.
    pending = os.environ.get("STOKE_SNAPSHOT") == "1"
    if pending:
        call_hook(module, "before_snapshot")
        freeze_heap()
    while True:
        ftype, payload = read_frame()
        if pending:
            pending = False
            after_restore(module)
        if ftype is None:
            return
        if ftype != FRAME_REQUEST:
            continue
        resp = respond(handler, json.loads(payload))
        sys.stdout.flush()
        try:
            write_frame(FRAME_RESPONSE, json.dumps(resp).encode())
        except OSError as exc:
            # stoke-vmm refuses a second answer (the handler wrote its own frame on
            # the channel) whole, before any of it is sent: serve the next request.
            print("stoke: the handler's return value was not sent: %s" % exc,
                  file=sys.stderr, flush=True)


def freeze_heap():
    # Everything alive now goes to the permanent generation: a collection in a
    # restored VM would otherwise walk (and fault in) the whole snapshot heap.
    gc.collect()
    gc.freeze()


def serve_runtime():
    """STOKE_SNAPSHOT=runtime: no function yet. The VMM snapshots this process at
    its first read (the runtime layer, shared by every function of the runtime); a VM
    restored from it gets a load frame naming the function (entry, handler, environment),
    imports it, answers, and is snapshotted again at its next read (the function
    layer: only the pages the import changed)."""
    for name in RUNTIME_PRELOAD:
        __import__(name)
    freeze_heap()
    ftype, payload = read_frame()
    if ftype is None:
        return  # the channel closed: this VM only gave the runtime layer (its dump)
    if ftype != FRAME_LOAD:
        raise SystemExit("stoke: a runtime snapshot expects a load frame first")
    cfg = json.loads(payload)
    os.environ.update(cfg.get("env", {}))
    os.environ["STOKE_SNAPSHOT"] = "1"
    module, handler = load_handler()
    write_frame(FRAME_RESPONSE, b'{"statusCode":200,"loaded":true}')
    serve(module, handler)


def main():
    # One write per line: whole log lines, and one exit per line instead of one per
    # print() argument as with -u. The bootstrap flushes after every request too.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    if os.environ.get("STOKE_SNAPSHOT") == "runtime":
        serve_runtime()
    else:
        serve(*load_handler())


if __name__ == "__main__":
    main()

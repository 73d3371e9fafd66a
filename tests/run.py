#!/usr/bin/env python3
"""Runs the whole test suite: the C unit tests (meson test) and the end-to-end tests
(tests/e2e/test_*.py against the real daemon). Ends with `N passed, N failed, N skipped`.

    tests/run.py [-k SUBSTRING] [--no-unit] [--no-e2e]
"""
import argparse
import glob
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "e2e"))
import harness  # noqa: E402

TEST_TIMEOUT = int(os.environ.get("STOKE_TEST_TIMEOUT", "180"))


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.failures = []

    def record(self, name, outcome, seconds, detail=""):
        setattr(self, outcome, getattr(self, outcome) + 1)
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[outcome]
        print("%s %-60s %6.2fs %s" % (mark, name, seconds, detail.splitlines()[0]
                                      if detail and outcome != "failed" else ""), flush=True)
        if outcome == "failed":
            self.failures.append(name)
            print("    " + detail.replace("\n", "\n    "), flush=True)


def run_unit(tally, build, keyword):
    logbase = "run-%d" % os.getpid()  # concurrent runs must not share one log
    cmd = ["meson", "test", "-C", build, "--print-errorlogs", "--num-processes", "2",
           "--logbase", logbase]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = os.path.join(build, "meson-logs", logbase + ".json")
    if not os.path.exists(log):
        tally.record("unit: meson test", "failed", time.monotonic() - t0,
                     proc.stdout[-4000:] + proc.stderr[-4000:])
        return
    with open(log) as f:
        for line in f:
            r = json.loads(line)
            name = "unit: " + r["name"]
            if keyword and keyword not in name:
                continue
            outcome = {"OK": "passed", "SKIP": "skipped", "EXPECTEDFAIL": "passed"}.get(
                r["result"], "failed")
            tally.record(name, outcome, r.get("duration", 0),
                         (r.get("stdout") or "")[-6000:] if outcome == "failed" else "")
    os.unlink(log)


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout("test ran over %d s" % TEST_TIMEOUT)


def run_test(tally, name, fn, daemon_for):
    t0 = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    known = getattr(fn, "known_issue", None)
    try:
        params = inspect.signature(fn).parameters
        fn(daemon_for()) if "d" in params else fn()
        if known:
            tally.record(name, "failed", time.monotonic() - t0,
                         "passes now: remove its known_issue marker (%s)" % known)
        else:
            tally.record(name, "passed", time.monotonic() - t0)
    except harness.Skip as e:
        tally.record(name, "skipped", time.monotonic() - t0, str(e))
    except BaseException as e:  # noqa: B902 (a test's failure must not stop the run)
        if isinstance(e, KeyboardInterrupt):
            raise
        if known and not isinstance(e, Timeout):
            tally.record(name, "skipped", time.monotonic() - t0, "known issue: " + known)
        else:
            tally.record(name, "failed", time.monotonic() - t0, traceback.format_exc())
    finally:
        signal.alarm(0)


def run_module(tally, path, keyword):
    modname = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception:
        tally.record("e2e: " + modname, "failed", 0, traceback.format_exc())
        return
    tests = [(n, f) for n, f in vars(mod).items()
             if n.startswith("test_") and callable(f)
             and (not keyword or keyword in modname + "." + n)]
    shared = []

    def daemon_for():
        if not shared:
            shared.append(harness.Daemon(*getattr(mod, "DAEMON_ARGS", ())).start())
        return shared[0]

    try:
        for n, f in sorted(tests, key=lambda t: t[1].__code__.co_firstlineno):
            run_test(tally, "e2e: %s.%s" % (modname, n), f, daemon_for)
    finally:
        for d in shared:
            try:
                d.close()
            except Exception:
                tally.record("e2e: %s (daemon shutdown)" % modname, "failed", 0,
                             traceback.format_exc())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", dest="keyword", default="", help="only tests whose name has this")
    ap.add_argument("--no-unit", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    tally = Tally()
    if not args.no_unit:
        run_unit(tally, harness.BUILD, args.keyword)
    if not args.no_e2e:
        for path in sorted(glob.glob(os.path.join(HERE, "e2e", "test_*.py"))):
            run_module(tally, path, args.keyword)
    if tally.failures:
        print("\nfailed:\n  " + "\n  ".join(tally.failures))
    line = "%d passed, %d failed" % (tally.passed, tally.failed)
    if tally.skipped:
        line += ", %d skipped" % tally.skipped
    print(line)
    return 1 if tally.failed or not (tally.passed + tally.failed) else 0


if __name__ == "__main__":
    sys.exit(main())

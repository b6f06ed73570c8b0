#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol (on a pipe, so no websocket library is
needed): opens a page, awaits a JavaScript expression, prints its JSON result, and optionally
saves a screenshot. Exit status 0 only when the expression resolved to an object whose `ok`
is true.

usage: drive.py URL EXPRESSION [--then-reload EXPRESSION] [--screenshot PNG]
                [--timeout SECONDS] [--chromium-arg ARG]...

With --then-reload, the page is reloaded (same browser profile, so its storage stays) after the
first expression, the second one is awaited, and the result is {ok, first, second}: ok when
both were.
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def report(event):
    """Echoes the page's console and uncaught exceptions to stderr as they happen."""
    if event.get("method") == "Runtime.consoleAPICalled":
        args = event["params"]["args"]
        text = " ".join(str(x.get("value", x.get("description", ""))) for x in args)
        print(f"[console.{event['params']['type']}] {text}", file=sys.stderr, flush=True)
    elif event.get("method") == "Log.entryAdded":
        entry = event["params"]["entry"]
        print(f"[log.{entry['level']}] {entry['text']}", file=sys.stderr, flush=True)
    elif event.get("method") == "Runtime.exceptionThrown":
        details = event["params"]["exceptionDetails"]
        text = details.get("exception", {}).get("description") or details.get("text")
        print(f"[exception] {text}", file=sys.stderr, flush=True)


class Browser:
    def __init__(self, extra_args):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            sys.exit("drive.py: chromium is not installed (bash scripts/setup-web.sh)")
        self.profile = tempfile.mkdtemp(prefix="rwkv-web-chromium.")
        # Chromium reads commands from fd 3 and answers on fd 4.
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        args = [
            exe,
            "--headless=new",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-sandbox",
            "--window-size=1000,900",
            *extra_args,
            "about:blank",
        ]

        def wire_fds():
            # Move both ends out of the way first: os.pipe() may itself have returned 3 or 4.
            r, w = os.dup(to_browser_r) + 100, os.dup(from_browser_w) + 100
            os.dup2(to_browser_r, r)
            os.dup2(from_browser_w, w)
            os.dup2(r, 3)  # dup2 clears close-on-exec on the copies
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            args,
            preexec_fn=wire_fds,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.profile, "chromium.log"), "wb"),
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.next_id = 0
        self.buffer = b""
        self.events = []

    def send(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self.read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
            report(reply)

    def wait_event(self, method, timeout):
        deadline = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            event = self.read(deadline)
            self.events.append(event)
            report(event)

    def read(self, deadline):
        import select

        while b"\0" not in self.buffer:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no answer from chromium in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe (crashed?)")
                self.buffer += chunk
        msg, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(msg)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def ok(value):
    return isinstance(value, dict) and value.get("ok") is True


def evaluate(browser, session, expression, timeout):
    """Awaits `expression` in the page: its JSON value, or {ok: false, error} if it threw."""
    result = browser.send(
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True},
        session=session,
        timeout=timeout,
    )
    if "exceptionDetails" in result:
        details = result["exceptionDetails"]
        desc = details.get("exception", {}).get("description") or details.get("text")
        return {"ok": False, "error": desc}
    return result["result"].get("value")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("expression")
    p.add_argument("--then-reload", help="expression to await after reloading the page")
    p.add_argument("--screenshot")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--chromium-arg", action="append", default=[])
    p.add_argument("--init-script", help="JavaScript run in the page before its own (debugging)")
    a = p.parse_args()
    browser = Browser(a.chromium_arg)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]
        browser.send("Runtime.enable", session=session)
        browser.send("Page.enable", session=session)
        browser.send("Log.enable", session=session)
        if a.init_script:
            browser.send(
                "Page.addScriptToEvaluateOnNewDocument", {"source": a.init_script}, session=session
            )
        browser.send("Page.navigate", {"url": a.url}, session=session)
        browser.wait_event("Page.loadEventFired", timeout=60)
        value = evaluate(browser, session, a.expression, a.timeout)
        if a.then_reload and ok(value):
            browser.events.clear()
            browser.send("Page.reload", session=session)
            browser.wait_event("Page.loadEventFired", timeout=60)
            second = evaluate(browser, session, a.then_reload, a.timeout)
            value = {"ok": ok(second), "first": value, "second": second}
        if a.screenshot:
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
            with open(a.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        print(json.dumps(value))
        return 0 if ok(value) else 1
    finally:
        browser.close()


if __name__ == "__main__":
    sys.exit(main())

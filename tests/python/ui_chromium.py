"""The status page (/ui) in a real browser: headless Chromium driven by the DevTools protocol.

Usage: ui_chromium.py CHROMIUM BASE_URL SOCKET [SCREENSHOT]

BASE_URL is the daemon's TCP listener (what a browser reaches), SOCKET its Unix socket, over
which this script makes the requests that change what the page shows (a chat, then an image
that soft-unloads chat: `fake_two_models` in tests/it/util.rs). The page is read through
Runtime.evaluate: the memory bar's segments, the model rows, the log. Prints one JSON line
with what it saw; any failed check raises (exit 1) with what the page showed.

When the test asks for it, the script then says "restart" on stdout and waits for a line on
stdin: the new daemon's socket, on the same TCP port. The page must say "reconnecting…"
meanwhile and come back live by itself.
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("vramd", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def post(sock_path, path, body):
    c = UnixHTTPConnection(sock_path)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise AssertionError(f"POST {path}: {r.status} {data[:300]!r}")
    return json.loads(data)


class Browser:
    """One headless Chromium with one page, spoken to over the DevTools WebSocket."""

    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="vramd-ui-")
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1100,700",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port()
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.dialogs = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _port(self):
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(path):
                lines = open(path).read().split("\n")
                if lines and lines[0].strip():
                    return int(lines[0])
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise AssertionError("chromium wrote no DevToolsActivePort")

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(msg["params"].get("message"))
                self.ws.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": True}}))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


# What the page shows, read from its DOM as a person would see it.
READ = """!document.getElementById('conn') ? 'null' : JSON.stringify({
  conn: document.getElementById('conn').textContent,
  bar: [...document.querySelectorAll('#bar .seg')].map(s => ({
    kind: s.dataset.kind, model: s.dataset.model || null, bytes: +s.dataset.bytes,
    width: s.getBoundingClientRect().width})),
  rows: Object.fromEntries([...document.querySelectorAll('#models tbody tr')].map(tr => [
    tr.dataset.model, {state: tr.querySelector('.state .word').textContent,
                       rank: tr.querySelector('.rank').textContent,
                       controls: tr.querySelectorAll('.controls button').length}])),
  log: [...document.querySelectorAll('#log li .text')].map(t => t.textContent),
})"""


def wait(b, what, pred, limit=20):
    deadline = time.time() + limit
    seen = None
    while time.time() < deadline:
        seen = json.loads(b.eval(READ))
        if seen is not None and pred(seen):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what}: {json.dumps(seen, indent=1)}")


def bytes_of(seen, kind, model=None):
    return sum(s["bytes"] for s in seen["bar"] if s["kind"] == kind and (model is None or s["model"] == model))


def escaping(b):
    """A model named like markup is shown as its name: the page writes data as text only."""
    name = "<script>alert(1)</script>"
    return b.eval("""(() => {
      const name = %s;
      const fake = JSON.parse(JSON.stringify(page.status));
      fake.models.push({...fake.models[0], name: name, state: 'failed', error: '<img src=x onerror=alert(2)>',
                        eviction_rank: null, running: [], queued: 0});
      page.status = fake;
      render();
      addLine({id: 999999, at: Date.now() / 1000, type: 'worker_crashed', text: 'The worker of ' + name + ' crashed'});
      const row = document.querySelector('#models tbody tr:last-child');
      return JSON.stringify({
        shown: row.querySelector('.name').textContent,
        error: row.querySelector('.state .sub').textContent,
        scripts: document.querySelectorAll('main script, main img').length,
        log: document.querySelector('#log li .text').textContent,
      });
    })()""" % json.dumps(name))


def empty(b, base):
    """A daemon with no model configured: the page is live, has no rows, and the bar is all free."""
    b.call("Page.navigate", url=base + "/ui")
    seen = wait(b, "a live page with no models", lambda s: s["conn"] == "live" and s["rows"] == {})
    assert bytes_of(seen, "free") > 0 and bytes_of(seen, "weights") == 0, seen
    print(json.dumps({"empty": seen}), flush=True)


def main():
    chromium, base, sock_path = sys.argv[1:4]
    shot = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    restart = os.environ.get("UI_TEST_RESTART") == "1"
    b = Browser(chromium)
    if os.environ.get("UI_TEST_EMPTY") == "1":
        try:
            return empty(b, base)
        finally:
            b.close()
    try:
        b.call("Page.navigate", url=base + "/ui")
        first = wait(b, "both models and a live connection",
                     lambda s: s["conn"] == "live" and set(s["rows"]) == {"chat", "sd"})
        assert first["rows"]["chat"]["state"] == "unloaded", first
        assert bytes_of(first, "weights") == 0 and bytes_of(first, "free") > 0, first
        # Over TCP nobody may change state: no control is offered.
        assert all(r["controls"] == 0 for r in first["rows"].values()), first

        post(sock_path, "/v1/completions", {"model": "chat", "prompt": "hi", "max_tokens": 2})
        chatting = wait(b, "chat's weights and KV cache in the bar",
                        lambda s: bytes_of(s, "weights", "chat") > 0 and bytes_of(s, "context", "chat") > 0)
        assert chatting["rows"]["chat"]["state"] == "loaded", chatting

        post(sock_path, "/v1/images/generations",
             {"model": "sd", "prompt": "a cat", "size": "512x512", "steps": 2, "seed": 1})
        set_aside = "Set aside the working memory of chat (512 MiB) to make room for an image of sd"
        after = wait(b, "chat soft-unloaded for the image, and the log saying so",
                     lambda s: s["rows"]["chat"]["state"] == "soft-unloaded"
                     and bytes_of(s, "weights", "sd") > 0 and set_aside in s["log"])
        assert bytes_of(after, "context", "chat") == 0, after
        assert bytes_of(after, "weights", "chat") == bytes_of(chatting, "weights", "chat"), after
        assert after["rows"]["chat"]["rank"] == "1st to go", after
        assert any(t.startswith("Made an image with sd") for t in after["log"]), after
        widths = [s["width"] for s in after["bar"]]
        assert all(w >= 0 for w in widths) and sum(widths) > 0, after
        if shot:
            b.call("Emulation.setDeviceMetricsOverride", width=1100, height=700, deviceScaleFactor=1, mobile=False)
            time.sleep(0.5)
            png = b.call("Page.captureScreenshot", format="png")["data"]
            import base64
            with open(shot, "wb") as f:
                f.write(base64.b64decode(png))

        # The log survives a reload (the daemon's replay plus localStorage).
        b.call("Page.reload")
        reloaded = wait(b, "the log again after a reload", lambda s: s["conn"] == "live" and set_aside in s["log"])

        escaped = json.loads(escaping(b))
        assert escaped["shown"] == "<script>alert(1)</script>", escaped
        assert escaped["error"] == "<img src=x onerror=alert(2)>", escaped
        assert escaped["scripts"] == 0 and not b.dialogs, (escaped, b.dialogs)
        assert escaped["log"] == "The worker of <script>alert(1)</script> crashed", escaped

        restarted = None
        if restart:
            print("restart", flush=True)
            wait(b, "reconnecting…", lambda s: s["conn"] == "reconnecting…")
            sock_path = sys.stdin.readline().strip()
            restarted = wait(b, "live again after the restart", lambda s: s["conn"] == "live"
                             and s["rows"].get("chat", {}).get("state") == "unloaded", limit=30)
            # What happened before the restart is still in the log (localStorage).
            assert set_aside in restarted["log"], restarted
        print(json.dumps({"first": first, "after": after, "reloaded": reloaded["log"][:3],
                          "escaped": escaped, "restarted": restarted is not None}), flush=True)
    finally:
        b.close()


if __name__ == "__main__":
    main()

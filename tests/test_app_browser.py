"""End to end: `streamlit run app.py` in a subprocess, read by headless Chromium.

Chromium is driven over the DevTools protocol (the `websockets` client that
Streamlit itself depends on) rather than with `--dump-dom`: Streamlit's page
is an empty shell that fills in over a WebSocket, and `--dump-dom` (even with
`--virtual-time-budget`, which does not wait for WebSocket traffic) dumps the
shell before any element arrives. Over the protocol the test waits until the
results table is in the page, then takes the DOM and a screenshot.
"""

import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from app_smoke import APP, REPO, subprocess_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1800",
)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


@pytest.fixture
def streamlit_server(smoke_run, tmp_path_factory, tmp_path):
    """`streamlit run app.py` on a free port, its runs folder = the smoke run's."""
    runs = smoke_run[0].parent
    port = free_port()
    env = subprocess_env(tmp_path_factory.getbasetemp())
    env["KD_KERAS_RUNS_DIR"] = str(runs)
    log = open(tmp_path / "streamlit.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(APP),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: (
                server.poll() is not None or get(f"http://127.0.0.1:{port}/_stcore/health") == "ok"
            ),
            60,
            "the Streamlit server",
        )
        assert server.poll() is None, (tmp_path / "streamlit.log").read_text()
        yield f"http://127.0.0.1:{port}", runs / "smoke"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


class Chromium:
    """Headless Chromium with a DevTools-protocol connection to its page."""

    def __init__(self, profile):
        self.profile = Path(profile)
        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        wait_until(
            lambda: port_file.is_file() and port_file.read_text().strip(),
            60,
            "Chromium's DevTools port",
        )
        port = int(port_file.read_text().split()[0])
        targets = wait_until(
            lambda: [
                t
                for t in json.loads(get(f"http://127.0.0.1:{port}/json/list") or "[]")
                if t.get("type") == "page"
            ],
            30,
            "Chromium's page",
        )
        from websockets.sync.client import connect

        self.socket = connect(targets[0]["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)[
            "result"
        ].get("value")

    def close(self):
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="needs /usr/bin/chromium (apt-get install chromium) for the end-to-end browser test",
)
@pytest.mark.slow
def test_browser_shows_the_results_of_a_smoke_run(streamlit_server, tmp_path):
    url, run = streamlit_server
    expected = pd.read_csv(run / "results.csv")
    # What the results table shows: each stage, its model and test accuracy.
    cells = [str(v) for v in expected["stage"]] + [str(v) for v in expected["model"]]
    cells += [f"{v:.4f}" for v in expected["test_accuracy"]]
    # Chromium wants a short profile path (its sockets live there).
    profile = Path(tempfile.mkdtemp(prefix="kd-chromium-"))
    browser = Chromium(profile)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{url}/?tab=results&run=smoke")

        def page_text():
            return browser.evaluate("document.body ? document.body.innerText : ''") or ""

        try:
            wait_until(
                lambda: (
                    "Download results.csv" in page_text() and all(c in page_text() for c in cells)
                ),
                120,
                "the results table",
            )
        finally:
            dom = browser.evaluate("document.documentElement.outerHTML") or ""
            (tmp_path / "app.html").write_text(dom)
            time.sleep(2)  # Let the charts and images finish drawing.
            shot = browser.call("Page.captureScreenshot", format="png")
            (tmp_path / "app.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)

    assert "Results of smoke" in dom
    for cell in cells:
        assert f">{cell}<" in dom, cell  # A cell of the results table.
    png = (tmp_path / "app.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    print(f"screenshot: {tmp_path / 'app.png'}")

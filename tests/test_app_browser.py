"""End to end: `streamlit run app.py` in a subprocess, read by headless Chromium.

Chromium is driven over the DevTools protocol (the `websockets` client that
Streamlit itself depends on) rather than with `--dump-dom`: Streamlit's page
is an empty shell that fills in over a WebSocket, and `--dump-dom` (even with
`--virtual-time-budget`, which does not wait for WebSocket traffic) dumps the
shell before any element arrives. Over the protocol the test waits until the
results table is in the page, then takes the DOM and a screenshot.
"""

import base64
import contextlib
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


@contextlib.contextmanager
def streamlit_app(env, log_path, *, host="127.0.0.1", app_args=()):
    """`streamlit run app.py [-- app_args]` on a free port of `host`, its
    output in `log_path`; yields the page's address, and stops the server."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true"]
    command += ["--server.port", str(port), "--browser.gatherUsageStats", "false"]
    if host == "127.0.0.1":
        command += ["--server.address", host]
    command += ["--", *app_args] if app_args else []
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(
                lambda: (
                    server.poll() is not None or get(f"http://{host}:{port}/_stcore/health") == "ok"
                ),
                60,
                "the Streamlit server",
            )
            assert server.poll() is None, Path(log_path).read_text()
            yield f"http://{host}:{port}"
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture
def streamlit_server(smoke_run, tmp_path_factory, tmp_path):
    """`streamlit run app.py` on a free port, its runs folder = the smoke run's."""
    runs = smoke_run[0].parent
    env = subprocess_env(tmp_path_factory.getbasetemp())
    env["KD_KERAS_RUNS_DIR"] = str(runs)
    with streamlit_app(env, tmp_path / "streamlit.log") as url:
        yield url, runs / "smoke"


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


def type_into(browser, label, text, *, last=False):
    """Types `text` into the input labelled `label` (as a user: focus,
    select, insert, Enter), so Streamlit commits it; a select box's input
    takes the option typed. `last`: the last such input on the page (the
    page renders every tab; the Tuning tab is the last)."""
    selector = json.dumps(f'input[aria-label="{label}"]')
    pick = "[...document.querySelectorAll(SEL)].pop()" if last else "document.querySelector(SEL)"
    found = browser.evaluate(
        f"(() => {{ const e = {pick.replace('SEL', selector)}; if (!e) return false; "
        "e.focus(); if (e.select) e.select(); return true; })()"
    )
    assert found, f"no input labelled {label!r}"
    browser.call("Input.insertText", text=text)
    for kind in ("keyDown", "keyUp"):
        browser.call(
            "Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13
        )
    time.sleep(1.0)  # The rerun that follows.


@pytest.fixture
def own_data_server(tmp_path_factory, tmp_path):
    """`streamlit run app.py -- --runs RUNS --data-root DATA` on a free port,
    with an image folder of 3 classes (grey and colour, 40x40) in DATA."""
    from PIL import Image

    runs, data = tmp_path / "runs", tmp_path / "data"
    for index, name in enumerate(("daisy", "rose", "tulip")):
        (data / "flowers" / name).mkdir(parents=True)
        for i in range(12):
            color = (80 * index, 255 - 20 * i, 40 * (i % 3))
            image = Image.new("RGB", (40, 40), color=color)
            (image.convert("L") if i % 4 == 0 else image).save(data / "flowers" / name / f"{i}.png")
    env = subprocess_env(tmp_path_factory.getbasetemp())
    for name in ("KD_KERAS_RUNS_DIR", "KD_KERAS_DATA_DIR", "KD_KERAS_CIFAR10"):
        env.pop(name, None)
    app_args = ("--runs", str(runs), "--data-root", str(data))
    try:
        with streamlit_app(
            env, tmp_path / "streamlit.log", host="localhost", app_args=app_args
        ) as url:
            yield url, runs, data / "flowers"
    finally:
        from kd_app.run_state import alive_runs

        for state in alive_runs(runs):
            import os
            import signal

            os.kill(state.pid, signal.SIGTERM)


@pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="needs /usr/bin/chromium (apt-get install chromium) for the end-to-end browser test",
)
@pytest.mark.slow
def test_browser_launches_a_run_from_an_image_folder(own_data_server, tmp_path):
    """In the browser: name an image folder, see its classes, images and
    size, set the sizes, Start; the run's folder records the folder as its
    data. `KD_APP_SCREENSHOT=PATH` keeps the screenshot (docs/app-own-data.png)."""
    url, runs, flowers = own_data_server
    profile = Path(tempfile.mkdtemp(prefix="kd-chromium-"))
    browser = Chromium(profile)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url)

        def page_text():
            return browser.evaluate("document.body ? document.body.innerText : ''") or ""

        wait_until(lambda: "Data source" in page_text(), 120, "the page")
        type_into(browser, "Data source", "flowers")
        facts = "image folder: 3 classes (daisy, rose, tulip); 36 images"
        wait_until(lambda: facts in page_text(), 60, "the data's description")
        for label, text in (
            ("Epochs (every stage)", "1"),
            ("Teacher depth", "8"),
            ("Student depth", "8"),
            ("Validation images", "6"),
            ("Validation images per class", "2"),
            ("Test images per class", "2"),
            ("Image size", "32"),
            ("Run name", "flowers"),
        ):
            type_into(browser, label, text)
        values = browser.evaluate(
            "JSON.stringify([...document.querySelectorAll('input')].map(e => [e.ariaLabel, e.value]))"
        )
        fields = dict(json.loads(values))
        assert (fields["Image size"], fields["Validation images"], fields["Run name"]) == (
            "32",
            "6",
            "flowers",
        ), fields
        clicked = browser.evaluate(
            "(() => { const b = [...document.querySelectorAll('button')]"
            ".find(b => b.innerText.trim() === 'Start'); if (b) b.click(); return !!b; })()"
        )
        assert clicked
        wait_until(lambda: "Started run 'flowers'" in page_text(), 60, "the start")
        text = page_text()
        browser.evaluate("window.scrollTo(0, 0)")
        time.sleep(2)
        shot = browser.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    import os

    keep = os.environ.get("KD_APP_SCREENSHOT")
    (Path(keep) if keep else tmp_path / "own-data.png").write_bytes(png)
    assert "24x20" not in text and "40x40 pixels" in text
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    log = (runs / "flowers.log").read_text()
    assert f"--data {flowers.resolve()}" in log and "--image-size 32" in log


@pytest.fixture
def tuning_server(smoke_run, tmp_path_factory, tmp_path):
    """`streamlit run app.py` over a runs folder of its own holding a copy of
    the smoke run (its teacher is the search's)."""
    runs = tmp_path / "runs"
    shutil.copytree(smoke_run[0], runs / "smoke")
    env = subprocess_env(tmp_path_factory.getbasetemp())
    env["KD_KERAS_RUNS_DIR"] = str(runs)
    try:
        with streamlit_app(env, tmp_path / "streamlit.log") as url:
            yield url, runs
    finally:
        from kd_app.searches import list_searches, search_state, stop_search

        for folder in list_searches(runs):
            if search_state(folder).alive:
                stop_search(folder)


@pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="needs /usr/bin/chromium (apt-get install chromium) for the end-to-end browser test",
)
@pytest.mark.slow
@pytest.mark.real_data
def test_browser_tuning_tab_shows_trials_of_both_workers(tuning_server, tmp_path):
    """In the browser: a search with 2 workers started from the Tuning tab;
    the trials table fills in as the workers' trials end, each row naming
    its worker, and the best values appear."""
    url, runs = tuning_server
    profile = Path(tempfile.mkdtemp(prefix="kd-chromium-"))
    browser = Chromium(profile)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{url}/?tab=tuning")

        def page_text():
            return browser.evaluate("document.body ? document.body.innerText : ''") or ""

        try:
            wait_until(lambda: "Start search" in page_text(), 180, "the Tuning tab")
        finally:
            (tmp_path / "start.txt").write_text(page_text())
        type_into(browser, "Preset", "smoke", last=True)
        for label, text in (
            ("Trials", "4"),
            ("Epochs per trial", "1"),
            ("Workers", "2"),
            ("Search name", "two-workers"),
        ):
            type_into(browser, label, text)
        clicked = browser.evaluate(
            "(() => { const b = [...document.querySelectorAll('button')]"
            ".find(b => b.innerText.trim() === 'Start search'); if (b) b.click(); return !!b; })()"
        )
        assert clicked
        wait_until(
            lambda: "Started search" in page_text() or "not started" in page_text(), 60, "the start"
        )
        assert "Started search 'two-workers'" in page_text(), page_text()[-1500:]

        def dom():
            return browser.evaluate("document.documentElement.outerHTML") or ""

        try:
            wait_until(
                lambda: "4 of 4 trials completed" in page_text() and "Best T" in page_text(),
                600,
                "the four trials and the best values",
            )
            wait_until(lambda: ">worker1<" in dom() and ">worker2<" in dom(), 30, "both workers")
        finally:
            (tmp_path / "tuning.html").write_text(dom())
            shot = browser.call("Page.captureScreenshot", format="png")
            (tmp_path / "tuning.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    folder = runs / "tuning" / "two-workers"
    settings = json.loads((folder / "search.json").read_text())
    assert sorted(set(settings["workers"].values())) == ["worker1", "worker2"]
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 4
    command = (runs / "tuning" / "two-workers.log").read_text()
    assert "--workers 2" in command and "--preset smoke" in command

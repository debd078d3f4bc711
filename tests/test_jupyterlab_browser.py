"""A real JupyterLab in headless Chromium driving the corral kernel.

The test starts JupyterLab on 127.0.0.1 (a private Jupyter environment with the corral
kernelspec), opens a notebook on the corral kernel in Debian's Chromium through its
chromedriver (selenium), and checks what users see: a matplotlib plot renders, an
``IntSlider`` renders, moving it changes the kernel's variable and setting the variable
moves it, Kernel > Interrupt and Kernel > Restart work, the debugger stops on a
breakpoint set in a cell, showing the call stack and the variables, and a
``tqdm.notebook`` bar fills. Screenshots are saved to the test's temporary directory (and
to ``$CORRAL_TEST_ARTIFACTS`` when set).

Needs: chromium and chromium-driver (Debian packages, installed by .ci/run), jupyterlab
and selenium (the test extra).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from jupyter_helpers import isolate_jupyter

from corral.transports.zmq.kernelspec import install_kernelspec

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
pytest.importorskip("jupyterlab", reason="needs jupyterlab (the test extra)")
pytest.importorskip("selenium", reason="needs selenium (the test extra)")
pytest.importorskip("ipywidgets", reason="needs ipywidgets (the test extra)")
pytest.importorskip("matplotlib_inline", reason="needs matplotlib-inline (the test extra)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

WAIT = 1.5 * helpers.TIMEOUT  # a browser, a Jupyter server and a kernel start first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(what: str, check: Any, timeout: float = WAIT) -> Any:
    """:func:`helpers.until` for a page: an exception means it is still being built."""
    return helpers.until(
        check, timeout, what=f"timed out waiting for {what}", tolerate=(Exception,), interval=0.2
    )


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """JupyterLab on 127.0.0.1, serving ``tmp_path/work``; yields (base url with token, dir)."""
    path = isolate_jupyter(tmp_path, monkeypatch)
    install_kernelspec(prefix=path.parent / "prefix")
    jupyter_path = os.pathsep.join(
        [str(path.parent / "prefix" / "share" / "jupyter"), str(Path(sys.prefix) / "share/jupyter")]
    )
    monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    work = tmp_path / "work"
    work.mkdir()
    port, token = free_port(), uuid.uuid4().hex
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # CI runs as root; JupyterLab refuses that unless told
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={work}",
            "--ServerApp.disable_check_xsrf=True",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabServerApp.announcements_url=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"jupyterlab exited: {(tmp_path / 'jupyterlab.log').read_text()}")
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        with direct.open(f"{base}/api/status?token={token}", timeout=2) as r:
            return r.status == 200

    try:
        until("JupyterLab to answer", ready)
        yield f"{base}|{token}", work
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


CELLS = [
    "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    "import ipywidgets as w\n"
    "s = w.IntSlider(value=5, min=0, max=10)\n"
    "seen = []\n"
    "def record(change):\n"
    "    seen.append(change['new'])\n"
    "    open('slider.txt', 'w').write(str(change['new']))\n"
    "s.observe(record, 'value')\n"
    "s",
    "s.value = 2",
    "import time\nprint('sleeping', flush=True)\ntime.sleep(120)",
    "print('alive', 'seen' in globals())",
    "def h(v):\n    w2 = v + 1\n    return w2\nh(41)",
    "from tqdm.notebook import tqdm\nfor _ in tqdm(range(5)):\n    pass",
]


def write_notebook(path: Path) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None}
        for c in CELLS
    ]
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "corral", "display_name": "corral", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def run_cell(driver: Any, index: int) -> None:
    js(
        driver,
        "const nb = window.jupyterapp.shell.currentWidget;"
        f"nb.content.activeCellIndex = {index};"
        "window.jupyterapp.commands.execute('notebook:run-cell');",
    )


def output_text(driver: Any, index: int) -> str:
    cells = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
    return cells[index].find_element(By.CSS_SELECTOR, ".jp-OutputArea").text


def test_notebook_in_jupyterlab(lab: tuple[str, Path], browser: Any, tmp_path: Path) -> None:
    base_token, work = lab
    base, token = base_token.split("|")
    write_notebook(work / "corral.ipynb")
    browser.get(f"{base}/lab/tree/corral.ipynb?token={token}")
    until("the notebook to open", lambda: js(browser, "return !!window.jupyterapp"))
    until(
        "the corral kernel to be idle",
        lambda: js(
            browser,
            "const w = window.jupyterapp.shell.currentWidget;"
            "return w && w.sessionContext && w.sessionContext.session &&"
            " w.sessionContext.session.kernel && w.sessionContext.session.kernel.name === 'corral'"
            " && w.sessionContext.session.kernel.status === 'idle';",
        ),
    )
    try:
        # A matplotlib plot renders as an image.
        run_cell(browser, 0)
        until(
            "the plot",
            lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-RenderedImage img"),
        )
        # An IntSlider renders, and moving it changes the kernel's variable.
        run_cell(browser, 1)
        handle = until(
            "the slider",
            lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .noUi-handle"),
        )[0]
        assert "Error displaying widget" not in output_text(browser, 1)
        handle.click()
        handle.send_keys(Keys.ARROW_RIGHT)
        assert until("the kernel to see the new value", lambda: _read(work / "slider.txt")) == "6"
        # And the other way: the kernel sets the value, the slider in the page follows.
        run_cell(browser, 2)
        until(
            "the slider to follow the kernel",
            lambda: _text(browser, ".jp-CodeCell .widget-readout") == "2",
        )
        browser.save_screenshot(str(tmp_path / "jupyterlab-corral.png"))
        # Kernel > Interrupt stops a running cell.
        run_cell(browser, 3)
        until("the cell to run", lambda: "sleeping" in output_text(browser, 3))
        js(browser, "window.jupyterapp.commands.execute('kernelmenu:interrupt');")
        until("KeyboardInterrupt", lambda: "KeyboardInterrupt" in output_text(browser, 3))
        # Kernel > Restart gives a fresh kernel.
        js(browser, "window.jupyterapp.commands.execute('kernelmenu:restart');")
        accept = until(
            "the restart dialog",
            lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-mod-accept"),
        )
        accept[0].click()
        until(
            "the restarted kernel",
            lambda: js(
                browser,
                "const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;"
                "return k.status === 'idle';",
            ),
        )
        run_cell(browser, 4)
        until("the fresh namespace", lambda: "alive False" in output_text(browser, 4))
        # The debugger: enable it, set a breakpoint in a cell, stop there, read the stack
        # and the variables, continue.
        bug = until(
            "the debugger button",
            lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-DebuggerBugButton:not(.disabled)"),
        )[0]
        bug.click()
        until("the debugger to start", lambda: bug.get_attribute("aria-pressed") == "true")
        cell = browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")[5]
        gutter = until(
            "the breakpoint gutter",
            lambda: cell.find_elements(By.CSS_SELECTOR, ".cm-breakpoint-gutter .cm-gutterElement"),
        )
        gutter[2].click()  # line 2 (the first element is CodeMirror's hidden spacer)
        until("the breakpoint", lambda: "debug-" in _text(browser, ".jp-DebuggerBreakpoints-body"))
        run_cell(browser, 5)
        until(
            "the stop in h()", lambda: _text(browser, ".jp-DebuggerCallstack-body").startswith("h")
        )
        assert ".py:2" in _text(browser, ".jp-DebuggerCallstack-body")
        until("the variables", lambda: "41" in _text(browser, ".jp-DebuggerVariables-body"))
        # Step over one line: the stop moves to line 3 and w2 appears among the locals.
        js(browser, "window.jupyterapp.commands.execute('debugger:next');")
        until("the step", lambda: ".py:3" in _text(browser, ".jp-DebuggerCallstack-body"))
        until("w2 = 42", lambda: "42" in _text(browser, ".jp-DebuggerVariables-body"))
        browser.save_screenshot(str(tmp_path / "jupyterlab-corral-debugger.png"))
        js(browser, "window.jupyterapp.commands.execute('debugger:continue');")
        until("the cell to finish", lambda: "42" in output_text(browser, 5))
        bug.click()
        until("the debugger to stop", lambda: bug.get_attribute("aria-pressed") == "false")
        # Turned on again: the kernel kept its debugpy session (docs/security.md) and
        # serves the new one from it; the breakpoint JupyterLab kept stops the cell again.
        bug.click()
        until("the debugger to start again", lambda: bug.get_attribute("aria-pressed") == "true")
        if "debug-" not in _text(browser, ".jp-DebuggerBreakpoints-body"):
            gutter = until(
                "the breakpoint gutter again",
                lambda: cell.find_elements(
                    By.CSS_SELECTOR, ".cm-breakpoint-gutter .cm-gutterElement"
                )[2:],
            )
            gutter[0].click()  # JupyterLab dropped it with the session: set it again
        until(
            "the breakpoint again",
            lambda: "debug-" in _text(browser, ".jp-DebuggerBreakpoints-body"),
        )
        run_cell(browser, 5)
        until(
            "the stop in h() again",
            lambda: _text(browser, ".jp-DebuggerCallstack-body").startswith("h"),
        )
        js(browser, "window.jupyterapp.commands.execute('debugger:continue');")
        until(
            "the stack to clear",
            lambda: not _text(browser, ".jp-DebuggerCallstack-body").startswith("h"),
        )
        bug.click()
        until("the debugger to stop again", lambda: bug.get_attribute("aria-pressed") == "false")
        # A tqdm.notebook bar renders as a widget and reaches the end.
        run_cell(browser, 6)
        until("the full bar", lambda: "100%" in output_text(browser, 6))
        cells = browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
        # A progress widget, not tqdm's text fallback (which has no such element).
        assert cells[6].find_elements(By.CSS_SELECTOR, ".jp-OutputArea [class*='progress']")
        assert "5/5" in output_text(browser, 6)
    finally:
        browser.save_screenshot(str(tmp_path / "jupyterlab-corral-end.png"))
        artifacts = os.environ.get("CORRAL_TEST_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            for shot in tmp_path.glob("jupyterlab-corral*.png"):
                shutil.copy(shot, Path(artifacts) / shot.name)
    assert (tmp_path / "jupyterlab-corral.png").stat().st_size > 0


def _text(driver: Any, selector: str) -> str:
    return str(
        js(
            driver,
            f"return Array.from(document.querySelectorAll({selector!r}))"
            ".map(e => e.innerText).join('\\n');",
        )
    ).strip()


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None

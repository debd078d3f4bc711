"""The kernelspec, and Jupyter's own tools driving corral through it: nbclient, console."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TIMEOUT
from jupyter_helpers import isolate_jupyter

from corral.transports.zmq.kernelspec import (
    add_kernel_cli,
    install_kernelspec,
    kernel_json,
    kernels_dir,
)

DATA = Path(__file__).parent / "data"


def test_kernel_json_content() -> None:
    spec = kernel_json()
    assert spec["argv"] == [
        sys.executable,
        "-m",
        "corral.plugins.kernel_main",
        "-f",
        "{connection_file}",
    ]
    assert spec["language"] == "python"
    assert spec["interrupt_mode"] == "signal"
    from corral.transports.zmq.debugger import debugger_available

    assert spec["metadata"]["debugger"] is debugger_available()  # with debugpy: JupyterLab's
    assert "corral" in spec["display_name"]


def test_install_prefix_and_sys_prefix(tmp_path: Path) -> None:
    path = install_kernelspec(prefix=tmp_path, name="corral-x", display_name="X")
    assert path == tmp_path / "share" / "jupyter" / "kernels" / "corral-x"
    spec = json.loads((path / "kernel.json").read_text())
    assert spec["display_name"] == "X"
    assert kernels_dir(sys_prefix=True) == Path(sys.prefix) / "share" / "jupyter" / "kernels"
    with pytest.raises(ValueError):
        kernels_dir(user=True, prefix=tmp_path)


def test_install_user_uses_jupyter_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    path = install_kernelspec(user=True)
    assert path == tmp_path / "data" / "kernels" / "corral"
    assert (path / "kernel.json").is_file()


def test_cli(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="corral")
    add_kernel_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kernel", "install", "--prefix", str(tmp_path), "--name", "k"])
    assert args.run(args, None) == 0
    assert (tmp_path / "share" / "jupyter" / "kernels" / "k" / "kernel.json").is_file()
    assert "installed" in capsys.readouterr().out


def test_corral_kernel_install_command(tmp_path: Path, monkeypatch) -> None:
    """The real ``corral kernel install`` (a built-in plugin's subcommand)."""
    from corral.cli import main

    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    assert main(["kernel", "install", "--user", "--name", "mine"]) == 0
    spec = json.loads((tmp_path / "data" / "kernels" / "mine" / "kernel.json").read_text())
    assert spec["language"] == "python"
    assert spec["argv"][1:3] == ["-m", "corral.plugins.kernel_main"]


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A private Jupyter data dir holding the ``corral`` kernelspec, and nothing in ~."""
    path = isolate_jupyter(tmp_path, monkeypatch)
    install_kernelspec(prefix=path.parent / "prefix")
    monkeypatch.setenv("JUPYTER_PATH", str(path.parent / "prefix" / "share" / "jupyter"))
    yield tmp_path


@pytest.mark.parametrize("notebook", sorted(DATA.glob("*.ipynb")), ids=lambda p: p.name)
def test_nbclient_runs_notebook(jupyter_env: Path, notebook: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="corral", timeout=TIMEOUT, startup_timeout=TIMEOUT
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3]
    assert code[0].outputs[0]["text"] == "total is 45\n"
    assert code[1].outputs[0]["output_type"] == "display_data"
    assert code[1].outputs[0]["data"]["text/html"] == "<b>bold</b>"
    assert code[2].outputs[0]["output_type"] == "execute_result"
    assert code[2].outputs[0]["data"]["text/plain"] == "90"


def test_jupyter_console(jupyter_env: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "jupyter_console", "--simple-prompt", "--kernel", "corral", "--no-confirm-exit"],
        env=dict(os.environ, TERM="dumb"),
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    try:
        child.expect(r"In \[1\]: ")
        child.sendline("print(6 * 7)")
        child.expect("42")
        child.expect(r"In \[2\]: ")
        child.sendline("3 + 4")
        child.expect(r"Out\[2\]: 7")
        child.expect(r"In \[3\]: ")
        child.sendline("1 / 0")
        child.expect("ZeroDivisionError")
        child.expect(r"In \[4\]: ")
        child.sendeof()  # Ctrl-D: the console shuts the kernel down and exits
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)

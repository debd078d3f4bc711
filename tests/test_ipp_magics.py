"""The %px family against a real cluster: in IPython's InteractiveShell (``%load_ext
corral``, ``view.activate``) and in corral's own interpreter (the plugin hook)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from interp_helpers import make_interpreter
from parallel_client_harness import LiveCluster

import corral
from corral.plugins.parallel.client import AsyncResult, Client, RemoteError

IPython = pytest.importorskip("IPython", reason="the %px extension is for IPython shells")
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = LiveCluster(tmp_path_factory.mktemp("corral"), threads=True, profile="default")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def rc(live: LiveCluster) -> Client:
    return live.client


def _real_ipython(shell: Any) -> bool:
    return type(shell).__module__.startswith("IPython")


@pytest.fixture(scope="module")
def shell(live: LiveCluster) -> Any:
    old = os.environ.get("CORRAL_DIR")
    os.environ["CORRAL_DIR"] = str(live.corral_dir)  # Client() finds this cluster
    if InteractiveShell.initialized() and not _real_ipython(InteractiveShell.instance()):
        # An in-process corral Interpreter of an earlier test adopted IPython's singleton
        # when IPython was imported: this test wants a real IPython shell.
        InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    assert _real_ipython(ip), type(ip)
    ip.run_line_magic("load_ext", "corral")
    yield ip
    if old is None:
        os.environ.pop("CORRAL_DIR", None)
    else:
        os.environ["CORRAL_DIR"] = old
    InteractiveShell.clear_instance()


def cell(ip: Any, code: str) -> Any:
    return ip.run_cell(code, store_history=False)


def engine_values(rc: Client, name: str) -> list[Any]:
    """``name`` on every engine, read through execute (not pull: pull has a known race
    that the lead engineer is fixing separately)."""
    ar = rc[:].execute(name, block=True)
    ar.wait_for_output(30)
    return [int(r.execute_result["data"]["text/plain"]) for r in ar.get()]


def test_px_and_cell_px_show_outputs_and_results(shell: Any, capsys: Any) -> None:
    assert cell(shell, "%px a = 5").success
    capsys.readouterr()
    assert cell(shell, "%px print(a * 2)").success
    # ipyparallel's layout: a label line per engine's block, its text under it
    blocks = capsys.readouterr().out.split("[stdout:")[1:]  # streamed: in arrival order
    assert sorted(blocks) == ["0] \n10\n", "1] \n10\n"]
    assert cell(shell, "%%px --targets 1\nprint('one')\nprint('two')\na + 1").success
    out = capsys.readouterr().out
    assert out.startswith("[stdout:1] \none\ntwo\n")  # streamed: labelled, one engine too
    assert "Out[1:" in out and "6" in out
    code = "%%px --targets [0,1] --group-outputs engine --no-stream\nprint('x')"
    assert cell(shell, code).success
    assert capsys.readouterr().out == "[stdout:0] \nx\n[stdout:1] \nx\n"  # not streamed
    code = "%%px --targets 1 --no-stream\nprint('alone')"
    assert cell(shell, code).success
    assert capsys.readouterr().out == "alone\n"  # one engine, not streamed: as printed


def test_errors_always_show(shell: Any, capsys: Any) -> None:
    result = cell(shell, "%%px\nprint('before')\n1/0")
    assert isinstance(result.error_in_exec, RemoteError)
    out = capsys.readouterr().out
    assert "[stdout:0] \nbefore" in out  # outputs first
    assert "ZeroDivisionError" in out  # then the remote traceback
    one = cell(shell, "%px --targets 0 raise KeyError('k')")
    assert one.error_in_exec is not None  # a usage error: %px takes no options
    result = cell(shell, "%%px -t 0\nraise KeyError('k')")
    assert isinstance(result.error_in_exec, RemoteError)
    assert "KeyError" in capsys.readouterr().out


def test_noblock_pxresult_save_name_and_local(shell: Any, rc: Client, capsys: Any) -> None:
    result = cell(shell, "%%px --noblock\nprint('later')\n7 * 6")
    assert isinstance(result.result, AsyncResult)
    capsys.readouterr()
    assert cell(shell, "%pxresult").success
    out = capsys.readouterr().out
    assert "[stdout:0] \nlater" in out and "42" in out
    assert cell(shell, "%pxresult --save-name kept").success
    assert shell.user_ns["kept"] is result.result
    assert cell(shell, "%%px --save-name saved\nz = 3").success
    assert isinstance(shell.user_ns["saved"], AsyncResult)
    assert cell(shell, "%%px --local\nlocal_and_remote = 11").success
    assert shell.user_ns["local_and_remote"] == 11
    assert engine_values(rc, "local_and_remote") == [11, 11]


def test_pxresult_reraises_a_failed_noblock_cell(shell: Any, capsys: Any) -> None:
    pending = cell(shell, "%%px --noblock\nprint('out first')\nraise KeyError('late')").result
    assert isinstance(pending, AsyncResult)
    capsys.readouterr()
    result = cell(shell, "%pxresult")
    assert isinstance(result.error_in_exec, RemoteError)  # as a blocking %%px would
    assert result.error_in_exec.ename in ("KeyError", "CompositeError")
    out = capsys.readouterr().out
    assert out.index("[stdout:0] \nout first") < out.index("KeyError")  # outputs, then error
    ok = cell(shell, "%%px --noblock\n1")
    assert ok.success
    assert cell(shell, "%pxresult").success  # a cell that worked still shows no error


def test_pxconfig_autopx_and_activate(shell: Any, rc: Client, capsys: Any) -> None:
    assert cell(shell, "%pxconfig --targets 1 --noblock").success
    result = cell(shell, "%px b = 1")
    assert isinstance(result.result, AsyncResult)
    result.result.get(30)
    assert cell(shell, "%pxconfig --targets all --block").success
    assert cell(shell, "%autopx").success
    assert cell(shell, "auto_var = 99").success
    assert cell(shell, "%autopx").success
    assert "auto_var" not in shell.user_ns  # ran on the engines, not here
    assert engine_values(rc, "auto_var") == [99, 99]
    assert rc[1].activate("1") is None  # as ipyparallel: a cell ending with it shows nothing
    pending = cell(shell, "%px1 6 * 7").result
    assert isinstance(pending, AsyncResult) and pending.get(30).engine_id == 1
    rc.activate(targets=0, suffix="0")  # rc.activate: a blocking view
    capsys.readouterr()
    assert cell(shell, "%px0 print(os.getpid() if 'os' in dir() else 'no os')").success
    assert cell(shell, "%px0 import os").success
    capsys.readouterr()
    assert cell(shell, "%px0 print(os.getpid())").success
    assert capsys.readouterr().out == f"[stdout:0] \n{rc.engines[0].pid}\n"  # streamed


def test_stream_output_arrives_while_the_cell_runs(shell: Any, tmp_path: Path, capsys: Any) -> None:
    release = tmp_path / "release"
    code = (
        "%%px --targets 0 --stream --progress-after -1\n"
        "import os, time\n"
        "print('first', end='', flush=True)\n"  # a line not ended yet shows too
        f"while not os.path.exists({str(release)!r}):\n"
        "    time.sleep(0.01)\n"
        "print(' second')\n"
    )
    done: list[Any] = []
    runner = threading.Thread(target=lambda: done.append(cell(shell, code)))
    runner.start()
    seen = ""
    deadline = time.monotonic() + 60
    while "first" not in seen:
        assert time.monotonic() < deadline and runner.is_alive()
        seen += capsys.readouterr().out
        time.sleep(0.01)
    assert "second" not in seen  # streamed before the cell finished
    release.write_text("")
    runner.join(60)
    assert done and done[0].success
    seen += capsys.readouterr().out
    assert seen == "[stdout:0] \nfirst second\n"  # ipyparallel's layout, the line joined


def test_progress_bar_and_interrupt(shell: Any, rc: Client, tmp_path: Path, capsys: Any) -> None:
    assert cell(shell, "%%px --progress-after 0\nimport time\ntime.sleep(0.2)").success
    assert "%px" in capsys.readouterr().err  # the progress bar
    started = tmp_path / "started"
    code = (
        "%%px --targets 0\n"
        "import time, pathlib\n"
        f"pathlib.Path({str(started)!r}).write_text('')\n"
        "time.sleep(120)\n"
    )
    main = threading.main_thread().ident

    def interrupt_when_started() -> None:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C / Kernel > Interrupt

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    result = cell(shell, code)
    assert isinstance(result.error_in_exec, RemoteError)
    assert result.error_in_exec.ename == "KeyboardInterrupt"  # it reached the engine
    assert rc[0].apply_sync(os.getpid) == rc.engines[0].pid  # and the engine lives on


def test_px_in_corrals_own_interpreter(live: LiveCluster, rc: Client) -> None:
    from corral.plugins.parallel import magics_plugin

    interp, rec = make_interpreter()
    magics_plugin.corral_add_magics(registry=interp.magics)
    old = os.environ.get("CORRAL_DIR")
    os.environ["CORRAL_DIR"] = str(live.corral_dir)
    try:
        result = interp.execute("%px print('from corral')")
        assert result.status == "ok", result.traceback
        lines = sorted(rec.stdout().splitlines())  # streamed in arrival order, in a kernel
        assert lines == ["[stdout:0] from corral", "[stdout:1] from corral"]  # inline
        rec.clear()
        result = interp.execute("%%px --targets 0\n40 + 2")
        assert result.status == "ok", result.traceback
        shown = [d["data"]["text/plain"] for d in rec.of("display.data")]
        assert any("42" in text for text in shown)
        rec.clear()
        result = interp.execute("%%px\n1/0")
        assert result.status == "error"
        assert "ZeroDivisionError" in "\n".join(result.traceback)
        result = interp.execute("%%px --local\nboth = 1")
        assert result.status == "ok", result.traceback
        assert interp.user_ns["both"] == 1
        rec.clear()
        result = interp.execute("%autopx")
        assert result.status == "ok", result.traceback
        assert "%autopx enabled" in rec.stdout()
        rec.clear()
        result = interp.execute("auto_here = 5\nprint('auto', auto_here * 2)")
        assert result.status == "ok", result.traceback
        assert sorted(rec.stdout().splitlines()) == ["[stdout:0] auto 10", "[stdout:1] auto 10"]
        assert "auto_here" not in interp.user_ns  # ran on the engines only
        result = interp.execute("raise KeyError('in autopx')")
        assert result.status == "error"  # remote errors still show while autopx is on
        assert "KeyError" in "\n".join(result.traceback)
        assert interp.execute("%autopx").status == "ok"
        assert interp.execute("local_again = 1").status == "ok"
        assert interp.user_ns["local_again"] == 1
        assert interp.input_transformers == []
        assert engine_values(rc, "auto_here") == [5, 5]
    finally:
        if old is None:
            os.environ.pop("CORRAL_DIR", None)
        else:
            os.environ["CORRAL_DIR"] = old
    assert corral.load_ipython_extension is not None

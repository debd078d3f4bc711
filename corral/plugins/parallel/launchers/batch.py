"""Batch-system launchers: engines as a job array submitted to Slurm or PBS/Torque.

Why a job array: each engine is one array task, so engines start as the scheduler finds
resources for them, one by one, rather than all-or-nothing in one big allocation; and
``scancel``/``qdel`` of one id stops them all.

The job script is rendered from a template: the built-in one per scheduler, or the file
named by ``[launcher:slurm] template`` (``[launcher:pbs] template``). Placeholders are
``{name}`` (a shell ``${VAR}`` is left alone):

=================  ================================================================
``{n}``            number of engines (array tasks)
``{array}``        the array range, ``0-{n-1}``
``{job_name}``     ``corral-engines-<cluster id>``
``{cluster_id}``   the cluster's id
``{log}``          the output file pattern (one file per task, in the profile's log/)
``{directives}``   the scheduler lines the options make (partition, account, time, ...)
``{engine}``       the engine command line (already shell-quoted)
``{python}``       the Python interpreter the engines run
``{profile_dir}``  the profile's directory
=================  ================================================================

The engines read the cluster file by its path, so the profile directory must be on a
file system the compute nodes share (as the job script and its output already are on
every Slurm and PBS site). A refused submission raises :class:`SchedulerError` carrying
the scheduler's own message; :meth:`BatchEngineSetLauncher.describe` reports what the
scheduler says about jobs whose engines have not arrived.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from corral.core.config import Option
from corral.core.private import private_dir
from corral.plugins.parallel.launchers.base import (
    EngineSetLauncher,
    LaunchError,
    LaunchHandle,
    tail,
)

__all__ = [
    "OPTIONS",
    "BatchEngineSetLauncher",
    "PBSEngineSetLauncher",
    "SGEEngineSetLauncher",
    "SchedulerError",
    "SlurmEngineSetLauncher",
    "render",
]

#: Seconds between status queries while a job runs (each is a subprocess and a
#: round-trip to the scheduler, which admins do not want hammered).
POLL_INTERVAL = 1.0

_FIELD = re.compile(r"(?<!\$)\{(\w+)\}")


class SchedulerError(LaunchError):
    """The scheduler refused a command; the message is its own, verbatim."""

    def __init__(self, command: list[str], returncode: int, output: str) -> None:
        self.command = command
        self.returncode = returncode
        self.output = output.strip()
        super().__init__(
            f"{shlex.join(command)} failed with exit status {returncode}: {self.output}"
        )


def render(template: str, fields: dict[str, str]) -> str:
    """Replace each ``{name}`` of ``fields`` in ``template``; other braces (and shell
    ``${VAR}``) stay as they are. An unknown ``{name}`` is left too, so a template may
    hold literal braces."""
    return _FIELD.sub(lambda m: fields.get(m.group(1), m.group(0)), template)


def _check_template(path: Any) -> Any:
    if path and not Path(path).expanduser().is_file():
        raise ValueError(f"no template file {path}")
    return path


def _check_time(text: str) -> str:
    if text and not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", text.strip()):
        raise ValueError(f"{text!r} is not a wall time")
    return text


def _scheduler_options(section: str, submit: str) -> tuple[Option, ...]:
    return (
        Option(section, "queue", "", "Partition (Slurm) or queue (PBS); empty: the default."),
        Option(section, "account", "", "Account to charge; empty: the default."),
        Option(
            section,
            "time",
            "",
            "Wall time of each engine, e.g. 1:00:00 or 2-00:00:00; empty: the default.",
            check=_check_time,
            accepts="[days-]hours[:minutes[:seconds]], or empty",
        ),
        Option(section, "args", [], f"Extra arguments for {submit}.", type="list"),
        Option(
            section,
            "template",
            None,
            "A job-script template file (see docs/clusters.md for its {fields});\n"
            "empty: the built-in one.",
            type="path",
            check=_check_template,
            accepts="the path of an existing file, or empty",
        ),
        Option(
            section,
            "python",
            "",
            "The Python interpreter on the compute nodes; empty: this interpreter's path.",
        ),
        Option(
            section,
            "bin_dir",
            "",
            f"Directory holding {submit} and the scheduler's other commands; empty: PATH.",
        ),
    )


def scheduler_options(section: str, submit: str) -> tuple[Option, ...]:
    """The options every batch launcher has (queue, account, time, args, template,
    python, bin_dir), for section ``[launcher:NAME]``: for batch launchers of plugins."""
    return _scheduler_options(section, submit)


OPTIONS = (
    *_scheduler_options("launcher:slurm", "sbatch"),
    *_scheduler_options("launcher:pbs", "qsub"),
    *_scheduler_options("launcher:sge", "qsub"),
)


def _run(
    command: list[str], timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        # Never the caller's stdin: a scheduler command must not wait on it.
        stdin = subprocess.DEVNULL if input is None else None
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, input=input, stdin=stdin
        )
    except FileNotFoundError:
        raise SchedulerError(command, 127, f"{command[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(command, -1, f"no answer within {timeout:g} s") from None


class BatchEngineSetLauncher(EngineSetLauncher):
    """Common ground of the batch launchers: render, submit, watch, cancel."""

    needs_tcp = True
    #: The commands, overridden per scheduler.
    submit_command: ClassVar[str] = ""
    cancel_command: ClassVar[str] = ""
    #: The built-in job script.
    default_template: ClassVar[str] = ""
    #: Whether the submit command reads the script on stdin (LSF's ``bsub < script``:
    #: only then does it read the script's ``#BSUB`` lines).
    script_on_stdin: ClassVar[bool] = False
    #: The job script's file name suffix.
    script_suffix: ClassVar[str] = ".sh"

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(n, **kwargs)
        self.job_ids: list[str] = []
        self._states: dict[str, list[str]] = {}
        #: the ended tasks' states each job last listed (see final_word)
        self._ended_words: dict[str, str] = {}
        self._last_poll = 0.0
        self._lock = threading.Lock()
        self._watching = False

    # ------------------------------------------------------------ per scheduler

    def directives(self) -> list[str]:
        """Scheduler lines for the job script from the options."""
        raise NotImplementedError

    def submit_argv(self, script: Path) -> list[str]:
        raise NotImplementedError

    def parse_job_id(self, output: str) -> str:
        raise NotImplementedError

    def query(self, job_id: str) -> list[str]:
        """The states of the job's tasks that the scheduler still knows; [] when done."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared

    def cmd(self, name: str) -> str:
        """A scheduler command, from ``bin_dir`` when set (several schedulers' clients
        name theirs alike: PBS's and SGE's are both ``qsub``)."""
        bin_dir = self.options.get("bin_dir")
        return str(Path(bin_dir).expanduser() / name) if bin_dir else name

    def preflight(self, advertised_ip: str) -> str | None:
        submit = self.cmd(self.submit_command)
        if shutil.which(submit) is None:
            where = "in bin_dir" if self.options.get("bin_dir") else "on PATH"
            return f"the {self.name} launcher needs {submit!r}, which is not {where}"
        return None

    @property
    def log_file(self) -> Path:
        return self.profile_dir / "log" / f"{self.file_prefix}-{self.name}-0.log"

    def log_pattern(self) -> str:
        """The per-task output file, in the scheduler's own pattern syntax."""
        raise NotImplementedError

    def engine_command(self) -> list[str]:
        """What each array task runs: the engine's monitor (restarts, limits, death
        reports; launchers/monitor.py), which runs the engine through the waiting
        bootstrap. The monitor reads the cluster file by path, as the engine does."""
        from corral.plugins.parallel.launchers.monitor import MODULE, Policy

        python = self.options.get("python") or sys.executable
        engine = super().command()
        policy = self.policy or Policy()
        return [
            python,
            "-m",
            MODULE,
            *policy.args(),
            "--cluster-file",
            str(self.cluster_file),
            "--",
            python,
            "-m",
            "corral.plugins.parallel.launchers.local",
            engine[2],
            "--wait-file",
            str(self.cluster_file),
            "--",
            *engine[3:],
        ]

    def fields(self) -> dict[str, str]:
        return {
            "n": str(self.n),
            "array": f"0-{self.n - 1}",
            "job_name": f"corral-engines-{self.cluster_id}",
            "cluster_id": self.cluster_id,
            "log": self.log_pattern(),
            "directives": "\n".join(self.directives()),
            "engine": shlex.join(self.engine_command()),
            "python": self.options.get("python") or sys.executable,
            "profile_dir": str(self.profile_dir),
        }

    def script(self) -> str:
        """The job script this launcher submits."""
        template_path = self.options.get("template")
        template = (
            Path(template_path).expanduser().read_text() if template_path else self.default_template
        )
        return render(template, self.fields())

    def start(self) -> list[LaunchHandle]:
        if self.job_ids:
            raise RuntimeError("this launcher has already submitted its job")
        private_dir(self.profile_dir / "log")  # owner-only whatever the umask
        run = private_dir(self.profile_dir / "run")
        path = run / f"{self.file_prefix}-{self.name}{self.script_suffix}"
        script = self.script()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w") as fh:
            fh.write(script)
        os.chmod(path, 0o700)
        command = self.submit_argv(path)
        result = _run(command, input=script if self.script_on_stdin else None)
        if result.returncode != 0:
            raise SchedulerError(command, result.returncode, result.stderr or result.stdout)
        job_id = self.parse_job_id(result.stdout)
        self.job_ids.append(job_id)
        self.handles = [LaunchHandle(job_id=job_id, log_file=self.log_file)]
        self._states[job_id] = ["PENDING"] * self.n
        self._watch()
        return self.handles

    def _watch(self) -> None:
        """A thread that asks the scheduler every :data:`POLL_INTERVAL` until the job is
        gone, then fires ``on_stop``: batch jobs have no process here to wait on."""
        if self._watching:
            return
        self._watching = True

        def watch() -> None:
            while self.poll(fresh=True) is None:
                self._stopped.wait(POLL_INTERVAL)
            self._notify_stopped()

        threading.Thread(target=watch, name=f"corral-{self.name}-watch", daemon=True).start()

    def poll(self, fresh: bool = False) -> int | None:
        if not self.job_ids:
            return None
        with self._lock:
            stale = time.monotonic() - self._last_poll > POLL_INTERVAL / 2
        if fresh or stale:
            states = {job: self._query_safely(job) for job in self.job_ids}
            with self._lock:
                self._states = states
                self._last_poll = time.monotonic()
        with self._lock:
            return None if any(self._states.values()) else 0

    def _query_safely(self, job_id: str) -> list[str]:
        try:
            return self.query(job_id)
        except SchedulerError:
            with self._lock:  # a scheduler hiccup is not the end of the job
                return self._states.get(job_id, [])

    @property
    def running_count(self) -> int:
        """Tasks the scheduler still holds: pending ones count, they are on their way."""
        self.poll()
        with self._lock:
            return sum(len(states) for states in self._states.values())

    def describe(self) -> str:
        """What the scheduler says about the job (for engines that do not arrive)."""
        self.poll(fresh=True)
        with self._lock:
            current = dict(self._states)
        parts = [
            f"job {job}: {', '.join(states) or self.final_word(job) or 'finished'}"
            for job, states in current.items()
        ]
        return "; ".join(parts)

    def final_word(self, job_id: str) -> str:
        """What the scheduler says about a job that ended (``TIMEOUT (TimeLimit)``), for
        errors about engines that are gone; "" where it keeps nothing."""
        return ""

    def send_signal(self, signum: int) -> None:
        for job_id in self.job_ids:
            if signum in (signal.SIGTERM, signal.SIGKILL):
                command = [self.cmd(self.cancel_command), job_id]
            else:
                command = self.signal_argv(job_id, signum)
            result = _run(command)
            if result.returncode != 0 and self.poll(fresh=True) is None:
                raise SchedulerError(command, result.returncode, result.stderr or result.stdout)

    def signal_argv(self, job_id: str, signum: int) -> list[str]:
        return [self.cmd(self.cancel_command), job_id]

    def output_tail(self) -> str:
        logs = sorted(self.profile_dir.glob(f"log/{self.file_prefix}-{self.name}-*.log"))
        return tail(logs[0]) if logs else ""


#: Slurm's states of a task that has ended (squeue lists them until MinJobAge).
_SLURM_ENDED = frozenset(
    ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
)


def _slurm_words(listing: str) -> tuple[list[str], list[str]]:
    """squeue's ``%T %r`` lines as words (``PENDING (Priority)``): (active, ended)."""
    active: list[str] = []
    ended: list[str] = []
    for line in listing.splitlines():
        state, _, reason = line.strip().partition(" ")
        if state:
            word = f"{state} ({reason})" if reason and reason != "None" else state
            (ended if state in _SLURM_ENDED else active).append(word)
    return active, ended


class SlurmEngineSetLauncher(BatchEngineSetLauncher):
    """Engines as a Slurm job array: ``sbatch``, ``squeue``, ``scancel``."""

    name = "slurm"
    submit_command = "sbatch"
    cancel_command = "scancel"
    default_template = """#!/bin/sh
#SBATCH --job-name={job_name}
#SBATCH --array={array}
#SBATCH --ntasks=1
#SBATCH --output={log}
{directives}
# Engines on compute nodes must not watch a pid of the submitting host.
unset CORRAL_PARENT_PID
exec {engine}
"""

    def directives(self) -> list[str]:
        lines = []
        for key, flag in (("queue", "partition"), ("account", "account"), ("time", "time")):
            if self.options.get(key):
                lines.append(f"#SBATCH --{flag}={self.options[key]}")
        return lines

    def log_pattern(self) -> str:
        return str(self.profile_dir / "log" / f"{self.file_prefix}-slurm-%a.log")

    def submit_argv(self, script: Path) -> list[str]:
        args = [str(a) for a in self.options.get("args") or []]
        # --export=ALL: the engines need this environment (PATH, PYTHONPATH, CORRAL_DIR).
        return [self.cmd("sbatch"), "--parsable", "--export=ALL", *args, str(script)]

    def parse_job_id(self, output: str) -> str:
        text = output.strip().split(";")[0]
        if not text.isdigit():
            raise SchedulerError(["sbatch"], 0, f"unexpected answer {output!r}")
        return text

    def _listed(self, job_id: str) -> tuple[list[str], list[str]]:
        """squeue's words for the job's tasks, (active, ended); ([], []) once Slurm has
        forgotten it. The ended tasks' words are kept for :meth:`final_word`.

        :raises SchedulerError: squeue failed otherwise.
        """
        # -t all: the ended tasks too, while Slurm still lists them
        command = [self.cmd("squeue"), "-h", "-r", "-t", "all", "-j", job_id, "-o", "%T %r"]
        result = _run(command)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return [], []  # finished and purged
            raise SchedulerError(command, result.returncode, result.stderr)
        active, ended = _slurm_words(result.stdout)
        if ended:
            with self._lock:
                self._ended_words[job_id] = ", ".join(ended)
        return active, ended

    def query(self, job_id: str) -> list[str]:
        return self._listed(job_id)[0]

    def final_word(self, job_id: str) -> str:
        """The ended tasks' states and reasons as squeue lists them (a walltime kill
        reads ``TIMEOUT (TimeLimit)``). Slurm forgets an ended job after MinJobAge (300 s
        by default, seconds on some sites and in the tests): then the words the job's
        last polls listed."""
        try:
            active, ended = self._listed(job_id)
        except SchedulerError:
            active, ended = [], []
        if active or ended:
            return ", ".join(active + ended)
        with self._lock:
            return self._ended_words.get(job_id, "")

    def signal_argv(self, job_id: str, signum: int) -> list[str]:
        name = signal.Signals(signum).name.removeprefix("SIG")
        return [self.cmd("scancel"), f"--signal={name}", job_id]


class PBSEngineSetLauncher(BatchEngineSetLauncher):
    """Engines as a PBS/Torque job array: ``qsub``, ``qstat``, ``qdel``. The array and
    names go on qsub's command line, which PBS Pro, Torque and Slurm's Torque wrappers
    all accept."""

    name = "pbs"
    submit_command = "qsub"
    cancel_command = "qdel"
    default_template = """#!/bin/sh
{directives}
unset CORRAL_PARENT_PID
exec {engine}
"""

    def directives(self) -> list[str]:
        lines = []
        if self.options.get("queue"):
            lines.append(f"#PBS -q {self.options['queue']}")
        if self.options.get("account"):
            lines.append(f"#PBS -A {self.options['account']}")
        if self.options.get("time"):
            lines.append(f"#PBS -l walltime={self.options['time']}")
        return lines

    def log_pattern(self) -> str:
        return str(self.profile_dir / "log" / f"{self.file_prefix}-pbs.log")

    def submit_argv(self, script: Path) -> list[str]:
        args = [str(a) for a in self.options.get("args") or []]
        argv = [self.cmd("qsub"), "-V", "-N", f"corral-engines-{self.cluster_id}"]
        if self.n > 1:
            argv += ["-J", f"0-{self.n - 1}"]
        for key, flag in (("queue", "-q"), ("account", "-A")):
            if self.options.get(key):
                argv += [flag, str(self.options[key])]
        if self.options.get("time"):
            argv += ["-l", f"walltime={self.options['time']}"]
        return [*argv, "-j", "oe", "-o", self.log_pattern(), *args, str(script)]

    def parse_job_id(self, output: str) -> str:
        text = output.strip().splitlines()[-1].strip() if output.strip() else ""
        if not text:
            raise SchedulerError(["qsub"], 0, "qsub printed no job id")
        return text

    def query(self, job_id: str) -> list[str]:
        command = [self.cmd("qstat"), job_id]
        result = _run(command)
        if result.returncode != 0:
            if "Unknown Job" in result.stderr or "Invalid job id" in result.stderr:
                return []
            raise SchedulerError(command, result.returncode, result.stderr)
        states = []
        for line in result.stdout.splitlines()[2:]:
            words = line.split()
            if len(words) >= 5 and words[4] in ("Q", "R", "H", "W", "E", "T", "S", "B"):
                states.append({"Q": "PENDING", "R": "RUNNING"}.get(words[4], words[4]))
        if len(states) == 1 and self.n > 1:
            # qstat shows an array as one line (its parent; "B" on PBS Pro): every task
            # counts as alive while the array does.
            states = states * self.n
        return states


class SGEEngineSetLauncher(BatchEngineSetLauncher):
    """Engines as a (Son of) Grid Engine array job: ``qsub -t``, ``qstat``, ``qdel``.
    Grid Engine numbers array tasks from 1."""

    name = "sge"
    submit_command = "qsub"
    cancel_command = "qdel"
    default_template = """#!/bin/sh
#$ -N {job_name}
#$ -t 1-{n}
#$ -j y
#$ -o {log}
#$ -V
#$ -S /bin/sh
{directives}
unset CORRAL_PARENT_PID
exec {engine}
"""

    def directives(self) -> list[str]:
        lines = []
        if self.options.get("queue"):
            lines.append(f"#$ -q {self.options['queue']}")
        if self.options.get("account"):
            lines.append(f"#$ -A {self.options['account']}")
        if self.options.get("time"):
            lines.append(f"#$ -l h_rt={self.options['time']}")
        return lines

    def log_pattern(self) -> str:
        # Grid Engine expands $TASK_ID in -o paths.
        return str(self.profile_dir / "log" / f"{self.file_prefix}-sge-$TASK_ID.log")

    def submit_argv(self, script: Path) -> list[str]:
        args = [str(a) for a in self.options.get("args") or []]
        return [self.cmd("qsub"), "-terse", *args, str(script)]

    def parse_job_id(self, output: str) -> str:
        # -terse prints "JOB.1-N:1" for an array job.
        text = output.strip().split(".")[0]
        if not text.isdigit():
            raise SchedulerError(["qsub"], 0, f"unexpected answer {output!r}")
        return text

    def query(self, job_id: str) -> list[str]:
        command = [self.cmd("qstat"), "-g", "d"]  # one line per array task
        result = _run(command)
        if result.returncode != 0:
            raise SchedulerError(command, result.returncode, result.stderr)
        states = []
        for line in result.stdout.splitlines()[2:]:
            words = line.split()
            if words and words[0] == job_id and len(words) >= 5:
                state = words[4]
                states.append("RUNNING" if "r" in state else "PENDING" if "q" in state else state)
        return states

    def signal_argv(self, job_id: str, signum: int) -> list[str]:
        return [self.cmd("qdel"), job_id]

"""The Windows HPC launcher: engines as one parametric-sweep job of Microsoft HPC Pack
(``job submit /jobfile:``, ``job view``, ``job cancel``).

Why a job XML rather than a command line: HPC Pack's ``job submit`` takes a job
description file, and only there can one job carry N identical tasks (a parametric
sweep, ``*`` in the command line standing for the sweep index) with their own output
files, the way a Slurm job array does.

No Windows HPC cluster can be had here, so this launcher is checked against *recorded*
behaviour (tests/data/scheduler_recordings/windows_hpc.json, written from HPC Pack 2019's
documented command-line answers, not captured from a live head node): the job XML and the
command lines it produces, how ``job submit``'s answer and a refusal are read, how ``job
view``'s state maps to engines pending or gone, and that stopping runs ``job cancel``.
What runs on the compute nodes is the same engine bootstrap as everywhere, on the code
paths Windows needs (``CORRAL_PLATFORM_COMPAT=windows`` runs those on Linux).

``[launcher:windows_hpc]``: ``scheduler`` (head node; empty: HPC Pack's
``%CCP_SCHEDULER%``), ``queue`` (node group), ``account`` (project), ``time`` (run time
limit), ``args``, ``template`` (a job XML template), ``python``, ``bin_dir``.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from corral.core.config import Option
from corral.plugins.parallel.launchers.batch import (
    BatchEngineSetLauncher,
    SchedulerError,
    _run,
    scheduler_options,
)

__all__ = ["OPTIONS", "WindowsHPCEngineSetLauncher", "runtime_seconds"]

OPTIONS = (
    *scheduler_options("launcher:windows_hpc", "job submit"),
    Option(
        "launcher:windows_hpc",
        "scheduler",
        "",
        "The HPC Pack head node (job ... /scheduler:NAME); empty: %CCP_SCHEDULER%.",
    ),
)

#: ``job view`` states of a job whose tasks still hold (or wait for) cores.
_PENDING = ("Configuring", "Submitted", "Validating", "ExternalValidation", "Queued")
_RUNNING = ("Dispatching", "Running", "Finishing", "Canceling")


def runtime_seconds(text: str) -> int:
    """``[days-]h[:m[:s]]`` (the batch launchers' wall time) -> seconds, HPC Pack's
    ``RuntimeSeconds``."""
    days, _, clock = text.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.append(0)
    hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def quoteattr(value: str) -> str:
    """``xml.sax.saxutils.quoteattr``, imported on first use: that module imports
    ``urllib.request`` (and with it http, ssl, email), some 45 ms that every process
    loading the plugins (each engine, at start) would pay for a launcher it never uses."""
    from xml.sax.saxutils import quoteattr as quote

    return quote(value)


class WindowsHPCEngineSetLauncher(BatchEngineSetLauncher):
    """Engines as the ``n`` sweep tasks of one HPC Pack job."""

    name = "windows_hpc"
    submit_command = "job"
    cancel_command = "job"
    script_suffix = ".xml"
    default_template = """<?xml version="1.0" encoding="utf-8"?>
<Job xmlns="http://schemas.microsoft.com/HPCS2008R2/scheduler/" Name={job_name_attr}
     UnitType="Core" MinCores="1" MaxCores={n_attr} IsExclusive="false"{directives}>
  <Tasks>
    <Task Type="ParametricSweep" StartValue="0" EndValue={last_attr} IncrementValue="1"
          MinCores="1" MaxCores="1" Name="engine"
          CommandLine={engine_attr}
          StdOutFilePath={log_attr} StdErrFilePath={log_attr} />
  </Tasks>
</Job>
"""

    def directives(self) -> list[str]:
        attributes = []
        if self.options.get("queue"):
            attributes.append(f"NodeGroups={quoteattr(self.options['queue'])}")
        if self.options.get("account"):
            attributes.append(f"Project={quoteattr(self.options['account'])}")
        if self.options.get("time"):
            seconds = runtime_seconds(self.options["time"])
            attributes.append(f'RuntimeSeconds="{seconds}"')
        return attributes

    def fields(self) -> dict[str, str]:
        fields = super().fields()
        directives = self.directives()
        fields.update(
            directives="".join(" " + a for a in directives),
            job_name_attr=quoteattr(fields["job_name"]),
            n_attr=quoteattr(str(self.n)),
            last_attr=quoteattr(str(self.n - 1)),
            # Windows quoting (CreateProcess rules), then XML attribute quoting.
            engine_attr=quoteattr(subprocess.list2cmdline(self.engine_command())),
            log_attr=quoteattr(self.log_pattern()),
        )
        return fields

    def log_pattern(self) -> str:
        # "*" is the sweep index in HPC Pack's task fields.
        return str(self.profile_dir / "log" / f"{self.file_prefix}-windows_hpc-*.log")

    def _scheduler(self) -> list[str]:
        head = self.options.get("scheduler")
        return [f"/scheduler:{head}"] if head else []

    def submit_argv(self, script: Path) -> list[str]:
        args = [str(a) for a in self.options.get("args") or []]
        return [self.cmd("job"), "submit", f"/jobfile:{script}", *self._scheduler(), *args]

    def parse_job_id(self, output: str) -> str:
        match = re.search(r"Job has been submitted\. ID: (\d+)", output)
        if match is None:
            raise SchedulerError(["job", "submit"], 0, f"unexpected answer {output.strip()!r}")
        return match.group(1)

    def query(self, job_id: str) -> list[str]:
        command = [self.cmd("job"), "view", job_id, *self._scheduler()]
        result = _run(command)
        text = result.stdout + result.stderr
        if result.returncode != 0:
            if "does not exist" in text:
                return []
            raise SchedulerError(command, result.returncode, text)
        match = re.search(r"^\s*State\s*:\s*(\w+)", result.stdout, re.MULTILINE)
        state = match.group(1) if match else ""
        if state in _PENDING:
            return ["PENDING"] * self.n
        if state in _RUNNING:
            return ["RUNNING"] * self.n
        return []  # Finished, Failed, Canceled: the engines are gone

    def send_signal(self, signum: int) -> None:
        """HPC Pack has no signals: any stop request cancels the job."""
        if signum not in (signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):
            return
        for job_id in self.job_ids:
            command = [self.cmd("job"), "cancel", job_id, *self._scheduler()]
            result = _run(command)
            if result.returncode != 0 and self.poll(fresh=True) is None:
                raise SchedulerError(command, result.returncode, result.stderr or result.stdout)

"""The HTCondor launcher: engines as the procs of one HTCondor cluster (``condor_submit``,
``condor_q``, ``condor_rm``).

No HTCondor pool can be had here, so this launcher is checked against HTCondor's
recorded behaviour (the submit description it writes; ``condor_submit``'s answers to
accepted and refused submissions; ``condor_q -af JobStatus`` listings) in
tests/test_launcher_scripts.py, not against a running pool.
"""

from __future__ import annotations

import re
from pathlib import Path

from corral.plugins.parallel.launchers.batch import (
    BatchEngineSetLauncher,
    SchedulerError,
    _run,
    scheduler_options,
)

__all__ = ["OPTIONS", "HTCondorEngineSetLauncher"]

OPTIONS = scheduler_options("launcher:htcondor", "condor_submit")

#: JobStatus codes: 1 idle, 2 running, 3 removed, 4 completed, 5 held, 6 transferring
#: output, 7 suspended. Removed and completed jobs are gone for our purposes.
_STATUS = {"1": "PENDING", "2": "RUNNING", "5": "HELD", "6": "RUNNING", "7": "SUSPENDED"}


def _condor_arguments(argv: list[str]) -> str:
    """HTCondor's "new" argument syntax: the whole value in double quotes, each argument
    in single quotes (a single quote doubled inside), a double quote doubled."""
    quoted = ["'" + arg.replace("'", "''").replace('"', '""') + "'" for arg in argv]
    return '"' + " ".join(quoted) + '"'


class HTCondorEngineSetLauncher(BatchEngineSetLauncher):
    """Engines as ``queue N`` procs of one submit description."""

    name = "htcondor"
    submit_command = "condor_submit"
    cancel_command = "condor_rm"
    script_suffix = ".sub"
    default_template = """# corral engines for cluster {cluster_id}
universe = vanilla
executable = {python}
arguments = {arguments}
getenv = true
environment = "CORRAL_PARENT_PID="
output = {log}
error = {log}
batch_name = {job_name}
{directives}
queue {n}
"""

    def fields(self) -> dict[str, str]:
        fields = super().fields()
        fields["arguments"] = _condor_arguments(self.engine_command()[1:])
        return fields

    def directives(self) -> list[str]:
        lines = []
        if self.options.get("account"):
            lines.append(f"accounting_group = {self.options['account']}")
        if self.options.get("queue"):
            lines.append(f'requirements = (TARGET.Machine == "{self.options["queue"]}")')
        if self.options.get("time"):
            seconds = _seconds(self.options["time"])
            lines.append(f"periodic_remove = (time() - EnteredCurrentStatus) > {seconds}")
        return lines

    def log_pattern(self) -> str:
        return str(self.profile_dir / "log" / f"{self.file_prefix}-htcondor-$(Process).log")

    def submit_argv(self, script: Path) -> list[str]:
        args = [str(a) for a in self.options.get("args") or []]
        return [self.cmd("condor_submit"), *args, str(script)]

    def parse_job_id(self, output: str) -> str:
        match = re.search(r"(\d+) job\(s\) submitted to cluster (\d+)\.", output)
        if match is None:
            raise SchedulerError(["condor_submit"], 0, f"unexpected answer {output.strip()!r}")
        return match.group(2)

    def query(self, job_id: str) -> list[str]:
        command = [self.cmd("condor_q"), job_id, "-af", "JobStatus"]
        result = _run(command)
        if result.returncode != 0:
            raise SchedulerError(command, result.returncode, result.stderr or result.stdout)
        return [_STATUS[w] for w in result.stdout.split() if w in _STATUS]

    def signal_argv(self, job_id: str, signum: int) -> list[str]:
        return [self.cmd("condor_rm"), job_id]


def _seconds(text: str) -> int:
    days, _, clock = text.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.append(0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]

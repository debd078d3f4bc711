"""The LSF launcher: engines as an IBM Spectrum LSF job array (``bsub``, ``bjobs``,
``bkill``).

No LSF can be had here, so this launcher is checked against LSF's recorded behaviour
(the job script and command line it produces; ``bsub``'s answers to accepted and refused
submissions; ``bjobs`` listings of pending, running and finished array elements) in
tests/test_launcher_scripts.py, not against a running LSF. LSF reads ``#BSUB`` lines
only from a script given on its standard input, so the script goes there.
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

__all__ = ["OPTIONS", "LSFEngineSetLauncher"]

OPTIONS = scheduler_options("launcher:lsf", "bsub")

#: bjobs STAT values of elements that still hold (or wait for) a slot.
_ALIVE = {"PEND": "PENDING", "RUN": "RUNNING", "PSUSP": "PSUSP", "USUSP": "USUSP", "SSUSP": "SSUSP"}


class LSFEngineSetLauncher(BatchEngineSetLauncher):
    """Engines as ``bsub -J "name[1-N]"`` array elements."""

    name = "lsf"
    submit_command = "bsub"
    cancel_command = "bkill"
    script_on_stdin = True
    default_template = """#!/bin/sh
#BSUB -J "{job_name}[1-{n}]"
#BSUB -o {log}
{directives}
unset CORRAL_PARENT_PID
exec {engine}
"""

    def directives(self) -> list[str]:
        lines = []
        if self.options.get("queue"):
            lines.append(f"#BSUB -q {self.options['queue']}")
        if self.options.get("account"):
            lines.append(f"#BSUB -P {self.options['account']}")
        if self.options.get("time"):
            lines.append(f"#BSUB -W {_lsf_time(self.options['time'])}")
        return lines

    def log_pattern(self) -> str:
        # %J: the job id, %I: the array index.
        return str(self.profile_dir / "log" / f"{self.file_prefix}-lsf-%I.log")

    def submit_argv(self, script: Path) -> list[str]:
        return [self.cmd("bsub"), *[str(a) for a in self.options.get("args") or []]]

    def parse_job_id(self, output: str) -> str:
        match = re.search(r"Job <(\d+)> is submitted", output)
        if match is None:
            raise SchedulerError(["bsub"], 0, f"unexpected answer {output.strip()!r}")
        return match.group(1)

    def query(self, job_id: str) -> list[str]:
        command = [self.cmd("bjobs"), "-noheader", "-o", "stat", job_id]
        result = _run(command)
        text = result.stdout + result.stderr
        if "is not found" in text:
            return []
        if result.returncode != 0:
            raise SchedulerError(command, result.returncode, text)
        return [_ALIVE[word] for word in result.stdout.split() if word in _ALIVE]

    def signal_argv(self, job_id: str, signum: int) -> list[str]:
        return [self.cmd("bkill"), "-s", str(int(signum)), job_id]


def _lsf_time(text: str) -> str:
    """``[days-]h[:m[:s]]`` -> LSF's ``-W [hours:]minutes`` (seconds round up)."""
    days, _, clock = text.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.append(0)
    hours, minutes, seconds = parts
    minutes_total = (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    return f"{minutes_total // 60}:{minutes_total % 60:02d}"

"""Replays a scheduler's recorded answers: installed under a scheduler command's name
(bsub, bjobs, condor_submit, ...) in a directory the test passes as the launcher's
bin_dir. Every call is appended to calls.jsonl (argv and stdin) so the test can check
what the launcher sent; answers come from the recording named by $REPLAY_RECORDING and
scenario $REPLAY_SCENARIO. A command's answer "<cmd>_after_<other>" replaces "<cmd>"
once <other> has been called (a job gone after it was killed). A command with a
subcommand may be recorded as "<cmd> <sub>" (HPC Pack's "job submit", "job view")."""

import json
import os
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
command = Path(sys.argv[0]).name
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
calls = here / "calls.jsonl"
with open(calls, "a") as fh:
    fh.write(json.dumps({"command": command, "argv": sys.argv[1:], "stdin": stdin}) + "\n")
recording = json.loads(Path(os.environ["REPLAY_RECORDING"]).read_text())
scenario = recording[os.environ["REPLAY_SCENARIO"]]


def _name(entry):
    """A command with a subcommand (HPC Pack's "job submit") is recorded as such."""
    sub = f"{entry['command']} {entry['argv'][0]}" if entry["argv"] else ""
    return (
        sub if sub and any(k.partition("_after_")[0] == sub for k in scenario) else entry["command"]
    )


entries = [json.loads(line) for line in calls.read_text().splitlines()]
called = {_name(entry) for entry in entries}
command = _name(entries[-1])
answer = scenario.get(command, {"stderr": f"{command}: not recorded\n", "rc": 127})
for key, value in scenario.items():
    name, sep, other = key.partition("_after_")
    if sep and name == command and other in called:
        answer = value
sys.stdout.write(answer.get("stdout", ""))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("rc", 0))

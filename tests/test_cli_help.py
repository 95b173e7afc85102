"""The command line as a new user meets it: every command and option says what it is for, and
a reader that stops early (``| head``) ends the command quietly."""

from __future__ import annotations

import argparse
import subprocess
import sys

from camlt.cli import build_parser


def unexplained(parser: argparse.ArgumentParser, name: str = "camlt") -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest for choice in action._choices_actions}
            missing += [f"{name} {sub}" for sub in action.choices if sub not in described]
            for sub, child in action.choices.items():
                missing += unexplained(child, f"{name} {sub}")
        elif not action.help and not isinstance(action, argparse._HelpAction):
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_a_help_text():
    assert unexplained(build_parser()) == []


def test_output_cut_short_by_head_ends_quietly(tmp_path):
    lines = [f"train/c{c}/{j}.jpg {c}" for c in range(3000) for j in range(2)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    command = (
        f"{sys.executable} -m camlt.cli data check {tmp_path / 'train.txt'} --per-class | head -n 1"
    )
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.count("\n") == 1

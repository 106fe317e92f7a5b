"""The README's commands work as written: its Python example runs, and every `relpose ...` command line in it
parses with the real CLI parser (flags and choices exist)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from relpose_ros.cli import build_parser

README = Path(__file__).resolve().parents[1] / 'README.md'


def blocks(language: str) -> list[str]:
    return re.findall(rf'```{language}\n(.*?)```', README.read_text(), re.S)


def relpose_command_lines() -> list[str]:
    """Every `relpose ...` command in the README's bash blocks, continuation lines joined, comments removed."""
    lines = []
    for block in blocks('bash'):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split(' # ')[0].strip()
            if line.startswith('relpose '):
                lines.append(line)
    return lines


def test_readme_python_example_runs():
    examples = blocks('python')
    assert examples, 'README has no Python example'
    for code in examples:
        done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                              cwd=README.parent)
        assert done.returncode == 0, done.stderr[-2000:]
        assert re.search(r'confidence \d\.\d\d, \d+ inliers', done.stdout), done.stdout


@pytest.mark.parametrize('line', relpose_command_lines())
def test_readme_relpose_commands_parse(line):
    argv = shlex.split(line)[1:]
    argv = ['config.yaml' if a == '...' else a for a in argv]    # "relpose train --config ... --resume last"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:                                           # argparse exits 2 on an unknown flag or choice
        pytest.fail(f'README command does not parse: {line}')
    assert callable(args.func)


def test_readme_has_the_two_commands_and_relpose_examples():
    text = README.read_text()
    assert 'make demo' in text and 'make test' in text
    assert len(relpose_command_lines()) >= 5

"""Run ``relocalize_node`` as a subprocess: its command line in this Python environment, its output in a log
file, and a clean shutdown (SIGINT, as Ctrl-C, then SIGTERM / SIGKILL)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def node_command(namespace: str, params: dict[str, Any], node_name: str = 'relocalize_node') -> list[str]:
    """Command line of a ``relocalize_node`` in this Python environment with ``-p name:=value`` parameters."""
    exe = Path(sys.executable).with_name('relocalize_node')
    cmd = [str(exe)] if exe.is_file() else [sys.executable, '-c',
                                            'import sys; from relpose_ros.ros.node import main; sys.exit(main())']
    cmd += ['--ros-args', '-r', f'__ns:={namespace}', '-r', f'__node:={node_name}']
    for key, value in params.items():
        cmd += ['-p', f'{key}:={json.dumps(value)}']
    return cmd


class NodeProcess:
    """A ``relocalize_node`` subprocess with its output in a log file and a clean (SIGINT) shutdown."""

    def __init__(self, command: list[str], log_path: Path | None = None):
        self.command = command
        self._tmp = None
        if log_path is None:
            self._tmp = tempfile.NamedTemporaryFile(prefix='relocalize_node_', suffix='.log', delete=False)
            log_path = Path(self._tmp.name)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'wb')
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self, tail_chars: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors='replace')
        except OSError:
            return ''
        return text[-tail_chars:]

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGINT (what Ctrl-C sends), then SIGTERM, then SIGKILL; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()
        if self._tmp is not None:
            self._tmp.close()
        return self.proc.returncode

"""Layering: only ``relpose_ros/ros/`` imports rclpy or ROS message / interface packages.

Everything else (core, backends, data, eval, train, bench, cli) must import and run without a ROS
installation; it reaches ROS only through :mod:`relpose_ros.ros`, lazily. ``rosbags`` (pure-Python
bag reading / writing) is not ROS and is allowed everywhere. Checked statically with ``ast`` on every
module (imports inside functions included), plus one import check in a fresh interpreter.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'relpose_ros'
ROS_LAYER = PACKAGE / 'ros'
ROS_MODULES = frozenset({'rclpy', 'tf2_ros', 'launch_ros', 'message_filters', 'cv_bridge', 'image_transport',
                         'rosbag2_py'})
ROS_SUFFIXES = ('_msgs', '_srvs', '_interfaces')  # sensor_msgs, std_srvs, action_msgs, lifecycle_msgs, ...


def is_ros_module(name: str) -> bool:
    """True for rclpy, rosidl_* and ROS message / service / interface packages (by top-level name)."""
    top = name.split('.')[0]
    return top in ROS_MODULES or top.startswith('rosidl') or top.endswith(ROS_SUFFIXES)


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import, incl. ``importlib.import_module('x')`` / ``__import__``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
            if name in ('import_module', '__import__'):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob('*.py')):
        if ROS_LAYER in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
        out += [f'{path.relative_to(REPO)}:{line}: imports {name}' for line, name in imported_modules(tree)
                if is_ros_module(name)]
    return out


def test_the_checker_recognises_ros_imports():
    code = ('import rclpy\nfrom sensor_msgs.msg import Image\nfrom rclpy.node import Node\n'
            'def f():\n    import geometry_msgs.msg\n    importlib.import_module("std_srvs.srv")\n'
            'import rosbags\nfrom rosbags.typesys import Stores\nimport numpy\nfrom ..ros import node\n')
    names = [n for _, n in imported_modules(ast.parse(code)) if is_ros_module(n)]
    assert names == ['rclpy', 'sensor_msgs.msg', 'rclpy.node', 'geometry_msgs.msg', 'std_srvs.srv']
    for name in ('diagnostic_msgs', 'std_msgs', 'tf2_ros', 'builtin_interfaces', 'rosidl_runtime_py', 'nav_msgs'):
        assert is_ros_module(name), name
    for name in ('rosbags', 'rosbags.rosbag2', 'numpy', 'torch', 'relpose_ros.ros.conversions', 'transforms3d'):
        assert not is_ros_module(name), name


def test_only_the_ros_layer_imports_rclpy_or_ros_messages():
    assert PACKAGE.is_dir() and ROS_LAYER.is_dir()
    found = violations()
    assert not found, ('ROS imports outside relpose_ros/ros/ (move that code under relpose_ros/ros/ and import it '
                       'lazily from there):\n' + '\n'.join(found))


def test_cli_and_core_import_without_loading_rclpy():
    """Building the whole ``relpose`` parser (every bench target included) and importing the core API load no ROS
    module: ``relpose bench node`` imports rclpy only when it runs."""
    code = ('import sys\n'
            'import relpose_ros.types, relpose_ros.geometry, relpose_ros.backends, relpose_ros.bench.node\n'
            'from relpose_ros.cli import build_parser\n'
            'build_parser().parse_args(["bench", "node", "--frames", "1"])\n'
            'bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "sensor_msgs", "geometry_msgs", '
            '"std_msgs", "builtin_interfaces", "rcl_interfaces"))\n'
            'print(bad)\n'
            'sys.exit(1 if bad else 0)\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, f'ROS modules loaded: {proc.stdout}{proc.stderr}'


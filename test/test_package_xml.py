"""package.xml: format 3 ament_python manifest whose every rosdep key resolves, and whose Python dependencies
cover setup.py's install_requires (each one either by a rosdep key or by the documented pip step).

``rosdep install`` stops at the first key it cannot resolve, so a made-up key (``python3-torch``,
``python3-kornia-pip``, ...) breaks the colcon install for everything else. The Python keys below were
checked in ros/rosdistro ``rosdep/python.yaml``; a new one must be checked there before it is added.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# python keys present in ros/rosdistro rosdep/python.yaml (checked at commit 000730dc5f91)
ROSDEP_PYTHON_KEYS = frozenset({
    'python3-numpy', 'python3-scipy', 'python3-yaml', 'python3-opencv', 'python3-matplotlib', 'python3-tqdm',
    'python3-transforms3d', 'python3-pytest', 'python3-pytest-timeout', 'python3-hypothesis',
})
# the same file has no key for these: they must not appear in package.xml
MISSING_KEYS = ('python3-torch', 'python3-kornia-pip', 'python3-rosbags-pip', 'python3-lightning-pip')
# setup.py install_requires -> rosdep key, or None when installed otherwise (PIP_ONLY: the pip step in docs/node.md)
PIP_TO_ROSDEP = {
    'setuptools': None,  # needed to build any ament_python package: comes with colcon
    'numpy': 'python3-numpy', 'scipy': 'python3-scipy', 'pyyaml': 'python3-yaml',
    'opencv-python-headless': 'python3-opencv', 'transforms3d': 'python3-transforms3d',
    'matplotlib': 'python3-matplotlib', 'tqdm': 'python3-tqdm',
    'torch': None, 'kornia': None, 'rosbags': None,
}
PIP_ONLY = ('torch', 'kornia', 'rosbags')
ROS_PACKAGES = ('rclpy', 'sensor_msgs', 'geometry_msgs', 'std_msgs', 'std_srvs', 'diagnostic_msgs')


def _manifest() -> ET.Element:
    return ET.parse(REPO / 'package.xml').getroot()


def _deps(root: ET.Element, tag: str) -> list[str]:
    return [e.text.strip() for e in root.findall(tag)]


def _setup_kwargs() -> dict:
    """The literal keyword arguments of the ``setup(...)`` call in setup.py."""
    tree = ast.parse((REPO / 'setup.py').read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'setup')
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            pass  # computed values (packages, data_files, name)
    return out


def _name(requirement: str) -> str:
    return re.split(r'[\s<>=!~;\[]', requirement, maxsplit=1)[0].lower()


def test_format_3_ament_python_with_the_ros_dependencies():
    root = _manifest()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'relpose_ros'
    assert root.findtext('export/build_type') == 'ament_python'
    exec_deps = _deps(root, 'exec_depend')
    assert set(ROS_PACKAGES) <= set(exec_deps), sorted(set(ROS_PACKAGES) - set(exec_deps))
    assert 'python3-pytest' in _deps(root, 'test_depend')
    all_deps = [e.text.strip() for e in root if e.tag.endswith('depend')]
    assert len(all_deps) == len(set(all_deps)), 'a dependency is listed twice'


def test_every_python_rosdep_key_exists():
    root = _manifest()
    keys = [d for d in (e.text.strip() for e in root if e.tag.endswith('depend')) if d.startswith('python')]
    unknown = sorted(set(keys) - ROSDEP_PYTHON_KEYS)
    assert not unknown, (f'rosdep keys not verified in ros/rosdistro rosdep/python.yaml: {unknown} (check the key '
                         'there; without one, install the package with pip and document it in docs/node.md)')
    assert not set(keys) & set(MISSING_KEYS)
    assert not any('lightning' in k for k in keys), 'lightning is training-only: setup.py extras, not package.xml'


def test_install_requires_are_covered_by_rosdep_or_the_documented_pip_step():
    setup = _setup_kwargs()
    exec_deps = set(_deps(_manifest(), 'exec_depend'))
    names = [_name(r) for r in setup['install_requires']]
    unmapped = sorted(set(names) - set(PIP_TO_ROSDEP))
    assert not unmapped, f'new install_requires {unmapped}: add its rosdep key to package.xml (or to PIP_ONLY)'
    for name in names:
        key = PIP_TO_ROSDEP[name]
        assert key is None or key in exec_deps, f'{name}: package.xml lacks <exec_depend>{key}</exec_depend>'
        assert key is not None or name in PIP_ONLY or name == 'setuptools'
    assert 'lightning' not in names and 'lightning' in setup['extras_require']['train']
    docs = (REPO / 'docs' / 'node.md').read_text()
    commands = [m.group(1).split() for m in re.finditer(r'`[^`]*pip install([^`]*)`', docs)]
    assert any(all(p in args for p in PIP_ONLY) for args in commands), \
        f'docs/node.md must give the pip command for {", ".join(PIP_ONLY)} in the colcon install section'

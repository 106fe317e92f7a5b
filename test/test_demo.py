"""`relpose demo` end to end on a tiny sequence: synthetic render -> MCAP bag -> real relocalize_node (rgbd) over
DDS -> scored report and plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from relpose_ros.cli import main
from relpose_ros.demo import format_table, isolate_dds

pytestmark = pytest.mark.ros


def test_demo_cli_on_a_tiny_sequence(tmp_path, capsys):
    out = tmp_path / 'demo_output'
    rc = main(['demo', '--out', str(out), '--frames', '5', '--width', '320', '--height', '240', '--fps', '3'])
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'median rotation error' in printed and 'within 25 cm / 5 deg' in printed and 'latency' in printed
    for name in ('report.md', 'summary.json', 'metrics.json', 'node.log', 'trajectory.png', 'error_per_frame.png',
                 'confidence_vs_error.png', 'synthetic_bag/metadata.yaml'):
        assert (out / name).is_file(), name
    data = json.loads((out / 'summary.json').read_text())
    s, rows = data['summary'], data['frames']
    assert s['frames_sent'] == len(rows) == 4 and 0 not in [r['frame'] for r in rows]   # the reference is not replayed
    assert s['estimated'] + s['dropped'] == 4 and s['published'] >= 1 and isinstance(s['node_dropped_frames'], int)
    published = [r for r in rows if r['status'] == 'published']
    assert len(published) == s['published']
    for r in published:                      # exact synthetic ground truth: the rgbd backend is near-perfect
        assert r['rot_err_deg'] < 1.0 and r['centre_err_m'] < 0.03 and r['accepted']
        assert 0.0 <= r['confidence'] <= 1.0 and r['latency_ms'] > 0
    assert s['within_25cm_5deg'] == pytest.approx(sum(bool(r['accepted']) for r in rows if r['status'] != 'dropped')
                                                  / s['estimated'])
    report = (out / 'report.md').read_text()
    assert '![trajectory](trajectory.png)' in report and '| frame |' in report and '--ros-args' in report


def test_table_formats_missing_values():
    rows = [{'frame': 3, 't_s': 0.1, 'status': 'dropped', 'confidence': None, 'rot_err_deg': None,
             'centre_err_m': None, 'latency_ms': None, 'gt_distance_m': 0.5, 'gt_angle_deg': 10.0},
            {'frame': 4, 't_s': 0.2, 'status': 'published', 'confidence': 0.9, 'rot_err_deg': 0.12345,
             'centre_err_m': 0.01234, 'latency_ms': 80.4, 'gt_distance_m': 0.5, 'gt_angle_deg': float('nan')}]
    lines = format_table(rows).splitlines()
    assert len(lines) == 3 and 'dropped' in lines[1] and lines[1].count(' - ') >= 3
    assert '0.123' in lines[2] and '1.23' in lines[2] and '80' in lines[2]


def test_dds_isolation_respects_the_user():
    env = {'ROS_DOMAIN_ID': '7'}
    chosen = isolate_dds(env)
    assert env['ROS_DOMAIN_ID'] == '7' and chosen == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    env = {}
    chosen = isolate_dds(env)
    assert 101 <= int(env['ROS_DOMAIN_ID']) <= 200 and np.isin(list(chosen), list(env)).all()

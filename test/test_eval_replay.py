"""`relpose eval --mode replay` end to end: a short synthetic bag played through the real relocalize_node
over DDS (constant backend), outputs recorded with arrival times and scored."""
from __future__ import annotations

import json

import numpy as np
import pytest

from relpose_ros.cli import main
from relpose_ros.data.datasets import open_dataset
from relpose_ros.eval.metrics import LATENCY_KEYS, SUMMARY_KEYS, pair_errors

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_replay_mode_scores_what_the_node_publishes(tmp_path):
    out = tmp_path / 'replay'
    rc = main(['eval', '--mode', 'replay', '--backend', 'constant', '--dataset', 'synthetic:12', '-D', 'width=64',
               '-D', 'height=48', '--rate-hz', '20', '--reference', '2', '--set', 'translation=[0.05,0,0.1]',
               '--set', 'confidence=0.8', '--namespace', f'/replay_test_{id(tmp_path) % 10000}', '--out', str(out),
               '--no-progress'])
    assert rc == 0
    m = json.loads((out / 'metrics.json').read_text())
    assert list(m['summary']) == list(SUMMARY_KEYS) + list(LATENCY_KEYS)
    s = m['summary']
    assert s['n_pairs'] == 11 and s['n_failed'] == 0 and s['dropped_frames'] == 0
    assert 0 < s['latency_ms_p50'] <= s['latency_ms_p95'] < 5000
    assert m['meta']['mode'] == 'replay' and m['meta']['published'] == 11
    seq = open_dataset('synthetic:12', width=64, height=48)
    assert sorted(p['query'] for p in m['pairs']) == [q for q in range(12) if q != 2]
    for p in m['pairs']:
        # the pose went through the node (T_ref_from_query on the wire) and back to T_query_from_ref
        np.testing.assert_allclose(p['R'], np.eye(3), atol=1e-9)
        np.testing.assert_allclose(p['t'], [0.05, 0, 0.1], atol=1e-9)
        assert p['confidence'] == pytest.approx(0.8, abs=1e-6) and p['gap'] == p['query'] - 2
        e = pair_errors(np.eye(3), [0.05, 0, 0.1], seq.gt_relative_pose(2, p['query']), seq.K, 64, 48)
        assert p['trans_err_m'] == pytest.approx(e.trans_err_m) and p['vcre_px'] == pytest.approx(e.vcre_px)
        assert p['latency_ms'] > 0
    assert 'latency p50 (ms)' in (out / 'report.md').read_text()
    assert (out / 'latency_histogram.png').is_file()


def test_replay_into_an_already_running_node(tmp_path):
    from relpose_ros.ros.replay import NodeProcess, node_command

    ns = f'/running_test_{id(tmp_path) % 10000}'
    node = NodeProcess(node_command(ns, {'backend': 'constant', 'min_confidence': 0.0, 'diagnostics_period': 0.2,
                                         'constant.confidence': 0.6}), tmp_path / 'running_node.log')
    try:
        rc = main(['eval', '--mode', 'replay', '--node', 'running', '--namespace', ns, '--backend', 'constant',
                   '--dataset', 'synthetic:6', '-D', 'width=48', '-D', 'height=36', '--rate-hz', '20',
                   '--out', str(tmp_path / 'out'), '--no-progress', '--no-plots'])
    finally:
        node.stop()
    assert rc == 0
    m = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert m['summary']['n_pairs'] == 5 and m['summary']['n_failed'] == 0
    assert all(p['confidence'] == pytest.approx(0.6, abs=1e-6) for p in m['pairs'])  # the running node's setting


def test_replay_of_a_truncated_bag_keeps_partial_results(tmp_path):
    from relpose_ros.data.bag_reader import BagSequence
    from test_replay import cut_bag

    path, _ = cut_bag(tmp_path)
    bag = BagSequence(path)
    n, no_gt = len(bag), bag.frames_without_gt
    out = tmp_path / 'out'
    rc = main(['eval', '--mode', 'replay', '--backend', 'constant', '--dataset', f'bag:{path}', '--rate-hz', '20',
               '--set', 'confidence=0.8', '--namespace', f'/replay_cut_{id(tmp_path) % 10000}', '--out', str(out),
               '--no-progress', '--no-plots'])
    assert rc == 0
    m = json.loads((out / 'metrics.json').read_text())
    assert m['partial'] and 'truncated' in m['partial_reason']
    assert m['meta']['frames_sent'] == n - 1 and len(m['pairs']) == n - 1              # every complete frame
    assert m['summary']['n_pairs'] == n - 1 - no_gt and m['details']['n_no_gt'] == no_gt
    assert m['meta']['published'] >= n - 2 and m['meta']['node_dropped_frames'] is not None
    assert (m['meta']['frames_without_gt'], m['meta']['skipped_no_depth']) == (no_gt, 0)
    report = (out / 'report.md').read_text()
    assert report.startswith('# relpose eval report\n\n**PARTIAL RESULTS**: bag full.mcap is truncated')
    assert "replaced in the node's latest-only queue" in report

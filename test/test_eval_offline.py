"""`relpose eval` offline mode end to end, pair protocols, metrics.json schema and the Map-free submission
round trip (write with `relpose eval --mapfree-submission`, read back and score)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from relpose_ros.cli import main
from relpose_ros.data.datasets import open_dataset
from relpose_ros.data.synthetic import SyntheticSequence
from relpose_ros.eval import mapfree_submission as MS
from relpose_ros.eval.metrics import SUMMARY_KEYS
from relpose_ros.eval.protocols import build_pairs, fixed_reference, keyframe_pairs
from relpose_ros.errors import ConfigError, DatasetError
from test_readers_tum_mapfree import write_mapfree, write_tum

PAIR_KEYS = {'reference', 'query', 'gap', 'R', 't', 'confidence', 'ok', 'rot_err_deg', 'trans_err_m', 'vcre_px'}


def test_protocols():
    assert fixed_reference(5, reference=1, step=2) == [(1, 3, 2)]
    assert keyframe_pairs(100, every=40, gaps=[60, 30]) == [(0, 30, 30), (0, 60, 60), (40, 70, 30)]
    with pytest.raises(ConfigError, match='no pairs'):
        build_pairs('keyframe', range(10), every=5, gaps=[20])
    with pytest.raises(ConfigError, match='Map-free dataset'):
        build_pairs('mapfree', range(10))
    with pytest.raises(ConfigError, match='out of range'):
        fixed_reference(3, reference=7)


def test_eval_offline_cli_writes_metrics_report_and_plots(tmp_path, capsys):
    out = tmp_path / 'out'
    rc = main(['eval', '--backend', 'constant', '--dataset', 'synthetic:12', '-D', 'width=48', '-D', 'height=36',
               '--protocol', 'keyframe', '--every', '4', '--gaps', '2', '5', '--set', 'confidence=0.7',
               '--out', str(out), '--no-progress'])
    assert rc == 0
    m = json.loads((out / 'metrics.json').read_text())
    assert list(m['summary']) == list(SUMMARY_KEYS)          # offline: no latency keys
    assert set(m['per_gap']) == {'2', '5'} and list(m['per_gap']['2']) == list(SUMMARY_KEYS)
    # keyframes 0, 4, 8 with gaps 2 and 5 (8 + 5 is past the end)
    assert [(p['reference'], p['query'], p['gap']) for p in m['pairs']] == [(0, 2, 2), (0, 5, 5), (4, 6, 2),
                                                                         (4, 9, 5), (8, 10, 2)]
    assert PAIR_KEYS <= set(m['pairs'][0]) and m['pairs'][0]['confidence'] == pytest.approx(0.7)
    # identity estimates: the errors are exactly the true relative motions
    seq = open_dataset('synthetic:12', width=48, height=36)
    T = seq.gt_relative_pose(4, 9)
    p = m['pairs'][3]
    assert p['trans_err_m'] == pytest.approx(np.linalg.norm(T[:3, :3].T @ T[:3, 3]))
    assert m['summary']['n_pairs'] == 5 and m['summary']['n_failed'] == 0 and not m['partial']
    report = (out / 'report.md').read_text()
    assert '| **all** | 5 | 0 |' in report and '![error_vs_gap](error_vs_gap.png)' in report
    for name in m['plots'].values():
        assert (out / name).stat().st_size > 5000
    assert '| **all** |' in capsys.readouterr().out


def test_eval_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(['eval', '--backend', 'constant', '--dataset', f'mapfree:{tmp_path}', '--out', str(tmp_path)]) == 2
    assert 'Map-free layout' in capsys.readouterr().err
    assert main(['eval', '--backend', 'nope', '--dataset', 'synthetic:3', '--protocol', 'fixed',
                 '--out', str(tmp_path)]) == 2
    assert 'unknown backend' in capsys.readouterr().err


@pytest.fixture(scope='module')
def mapfree_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp('mapfree') / 's00007'
    seq = SyntheticSequence(num_frames=12, width=48, height=36, seed=2)
    write_mapfree(root, [seq[i] for i in range(12)])
    return root


def test_mapfree_submission_round_trip(tmp_path, mapfree_scene):
    out, zpath = tmp_path / 'eval', tmp_path / 'sub.zip'
    assert main(['eval', '--backend', 'constant', '--dataset', f'mapfree:{mapfree_scene}', '--protocol', 'mapfree',
                 '--set', 'translation=[0.1,0,0]', '--set', 'confidence=0.4', '--mapfree-submission', str(zpath),
                 '--out', str(out), '--no-progress', '--no-plots']) == 0
    m = json.loads((out / 'metrics.json').read_text())
    assert [p['gap'] for p in m['pairs']] == [0, 5, 10]       # every 5th seq1 frame
    with zipfile.ZipFile(zpath) as z:
        assert z.namelist() == ['pose_s00007.txt']
        lines = z.read('pose_s00007.txt').decode().split('\n')
    assert lines[0].split() == ['seq1/frame_00000.jpg', '1', '0', '0', '0', '0.1', '0', '0', '0.4']
    scored = MS.score_submission(zpath, mapfree_scene.parent)
    for k in SUMMARY_KEYS:
        a, b = scored['summary'][k], m['summary'][k]
        assert (a is None and b is None) or (np.isnan(a) and b is None) or a == pytest.approx(b, rel=1e-6), k
    # the CLI scorer writes the same summary
    assert main(['eval', '--score-mapfree-submission', str(zpath), '--dataset', f'mapfree:{mapfree_scene}',
                 '--out', str(tmp_path / 'score')]) == 0
    again = json.loads((tmp_path / 'score' / 'metrics.json').read_text())
    assert again['summary']['median_trans_err_m'] == pytest.approx(m['summary']['median_trans_err_m'], rel=1e-6)


def test_submission_scoring_counts_missing_and_nan_lines(tmp_path, mapfree_scene):
    seq = open_dataset(f'mapfree:{mapfree_scene}')
    rows = []
    for index, number in seq.query_numbers():
        if number in (0, 5):  # perfect estimates; frame 10 missing
            T = seq.gt_relative_pose(0, index)
            rows.append((seq.frames[index], T[:3, :3], T[:3, 3], 1.0))
    zpath = MS.write_submission(tmp_path / 'sub.zip', {'s00007': rows})
    s = MS.score_submission(zpath, mapfree_scene)['summary']
    assert s['n_pairs'] == 3 and s['n_failed'] == 1
    assert s['median_trans_err_m'] == pytest.approx(0, abs=1e-6) and s['median_vcre_px'] == pytest.approx(0, abs=1e-3)
    assert s['precision_pose'] == pytest.approx(2 / 3) and s['auc_vcre'] == pytest.approx(2 / 3)
    with zipfile.ZipFile(tmp_path / 'nan.zip', 'w') as z:
        z.writestr('pose_s00007.txt', 'seq1/frame_00000.jpg nan 0 0 0 0 0 0 1\n')
    assert MS.read_submission(tmp_path / 'nan.zip')['s00007']['seq1/frame_00000.jpg'] is None
    s = MS.score_submission(tmp_path / 'nan.zip', mapfree_scene)['summary']
    assert s['n_failed'] == 3 and s['precision_pose'] == 0.0
    (tmp_path / 'bad.zip').write_text('not a zip')
    with pytest.raises(DatasetError, match='not a zip'):
        MS.read_submission(tmp_path / 'bad.zip')


@pytest.mark.data
def test_eval_on_seven_scenes_scores_real_ground_truth(tmp_path, seven_scenes):
    out = tmp_path / 'out'
    assert main(['eval', '--backend', 'constant', '--dataset', f'7scenes:{seven_scenes}', '--every', '300',
                 '--gaps', '30', '--out', str(out), '--no-progress', '--no-plots']) == 0
    m = json.loads((out / 'metrics.json').read_text())
    seq = open_dataset(f'7scenes:{seven_scenes}')
    assert [(p['reference'], p['query']) for p in m['pairs']] == [(0, 30), (300, 330), (600, 630), (900, 930)]
    for p in m['pairs']:  # identity estimate: the rotation error is the true relative rotation angle
        T = seq.gt_relative_pose(p['reference'], p['query'])
        angle = np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1) / 2, -1, 1)))
        assert p['rot_err_deg'] == pytest.approx(angle, abs=1e-6)


def test_unreadable_frames_fail_loudly_or_keep_partial_results(tmp_path, capsys):
    from test_readers_bag import write_custom_bag

    synth = SyntheticSequence(num_frames=6, width=64, height=48, seed=5)
    write_custom_bag(tmp_path / 'bad_info', synth, 'tf_stamped', info_width=80)
    assert main(['eval', '--backend', 'constant', '--dataset', f'bag:{tmp_path / "bad_info"}', '--protocol', 'fixed',
                 '--out', str(tmp_path / 'o1'), '--no-progress']) == 2
    assert 'camera_info size 80x48 differs from image size 64x48' in capsys.readouterr().err

    class BreaksAtFour:  # a sequence whose frame 4 cannot be read (as a damaged file would)
        name, partial = 'breaks', False

        def __len__(self):
            return 6

        def __getitem__(self, i):
            if i == 4:
                raise DatasetError('frame 4: cannot read image')
            return synth[i]

    from relpose_ros.backends import create
    from relpose_ros.eval.offline import evaluate_offline
    from relpose_ros.eval.report import write_report

    result = evaluate_offline(create('constant', device='cpu'), BreaksAtFour(), fixed_reference(6), progress=False)
    assert result.partial and 'frame 4: cannot read image' in result.partial_reason
    assert [p.query for p in result.pairs] == [1, 2, 3]
    m = write_report(result, tmp_path / 'o2', plots=False)
    assert m['partial'] and '**PARTIAL RESULTS**' in (tmp_path / 'o2' / 'report.md').read_text()


def test_reader_counts_reach_metrics_and_report(tmp_path):
    synth = SyntheticSequence(num_frames=7, width=48, height=36, seed=3)
    write_tum(tmp_path / 'tum', [synth[i] for i in range(7)], drop_gt=(2,), drop_depth=(4, 5))
    out = tmp_path / 'out'
    assert main(['eval', '--backend', 'constant', '--dataset', f'tum:{tmp_path / "tum"}', '--protocol', 'fixed',
                 '--out', str(out), '--no-progress', '--no-plots']) == 0
    m = json.loads((out / 'metrics.json').read_text())
    assert (m['meta']['frames_without_gt'], m['meta']['skipped_no_depth']) == (1, 2)
    assert 'skipped_no_camera_info' not in m['meta']                # the TUM reader has no camera_info stream
    assert m['summary']['n_pairs'] == 3 and m['details']['n_no_gt'] == 1   # 5 frames kept, reference 0
    report = (out / 'report.md').read_text()
    assert 'Frames: 1 without ground truth (kept, not scored); skipped by the reader: 2 without depth.' in report
    # a reader with no skipping concept still reports its frames without ground truth (never null)
    assert main(['eval', '--backend', 'constant', '--dataset', 'synthetic:4', '-D', 'width=32', '-D', 'height=24',
                 '--protocol', 'fixed', '--out', str(tmp_path / 's'), '--no-progress', '--no-plots']) == 0
    assert json.loads((tmp_path / 's' / 'metrics.json').read_text())['meta']['frames_without_gt'] == 0

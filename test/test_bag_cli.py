"""`relpose bag make` / `relpose bag info` through the real command-line entry point."""
from __future__ import annotations

import numpy as np
import yaml

from relpose_ros.cli import main
from relpose_ros.data.datasets import open_dataset


def test_bag_make_then_read_back_identical(tmp_path, capsys):
    out = tmp_path / 'synth_bag'
    rc = main(['bag', 'make', '--dataset', 'synthetic:9', '-D', 'width=48', '-D', 'height=36', '--every', '2',
               '--out', str(out)])
    assert rc == 0
    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['storage_identifier'] == 'mcap' and meta['message_count'] == 5 * 5
    topics = {t['topic_metadata']['name']: t['message_count'] for t in meta['topics_with_message_count']}
    assert topics['/camera/color/image_raw'] == 5 and topics['/tf'] == 5
    src = open_dataset('synthetic:9', width=48, height=36)
    back = open_dataset(f'bag:{out}')
    assert len(back) == 5
    for j, i in enumerate(range(0, 9, 2)):
        assert np.array_equal(back[j].frame.rgb, src[i].frame.rgb)
        np.testing.assert_allclose(back[j].T_world_from_cam, src[i].T_world_from_cam, atol=1e-9)
        assert back[j].frame.stamp_ns - back[0].frame.stamp_ns == src[i].frame.stamp_ns - src[0].frame.stamp_ns
    capsys.readouterr()
    assert main(['bag', 'info', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'frames: 5 (without ground truth: 0' in text and '/ground_truth/pose' in text


def test_bag_make_errors_exit_2(tmp_path, capsys):
    assert main(['bag', 'make', '--dataset', f'tum:{tmp_path}', '--out', str(tmp_path / 'x')]) == 2
    assert 'TUM RGB-D layout' in capsys.readouterr().err
    assert main(['bag', 'info', str(tmp_path / 'missing')]) == 2
    assert 'does not exist' in capsys.readouterr().err

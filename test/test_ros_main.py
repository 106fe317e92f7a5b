"""The installed ``relocalize_node`` executable: params file + remaps from the command line, a pose
over DDS, a clean exit on Ctrl-C (SIGINT), and an invalid parameter refused with the reason."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from relpose_ros.ros.conversions import frame_to_messages  # noqa: E402
from relpose_ros.types import Frame  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]


def _executable() -> list[str]:
    exe = Path(sys.executable).parent / 'relocalize_node'
    if exe.exists():
        return [str(exe)]
    found = shutil.which('relocalize_node')
    return [found] if found else [sys.executable, '-m', 'relpose_ros.ros.node']


def _frame(stamp_ns: int, frame_id: str) -> Frame:
    rng = np.random.default_rng(stamp_ns % 1000)
    K = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    return Frame(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), K, None, stamp_ns, frame_id)


def test_executable_with_params_file_remaps_and_sigint():
    cmd = _executable() + ['--ros-args', '--params-file', str(REPO / 'config' / 'relocalize.yaml'),
                           '-p', 'backend:=constant', '-p', 'use_depth:=false', '-p', 'constant.translation:=[0.0, 0.0, 1.0]',
                           '-r', 'image:=/cam/color/image_raw', '-r', 'camera_info:=/cam/color/camera_info',
                           '-r', 'relpose:=/robot/relpose']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    context = rclpy.Context()
    rclpy.init(context=context)
    tester = rclpy.create_node('main_tester', context=context)
    received: list[TransformStamped] = []
    qos = QoSProfile(depth=10)
    tester.create_subscription(TransformStamped, '/robot/relpose', received.append, qos)
    pubs = {t: tester.create_publisher(Image if 'image' in t else CameraInfo, t, qos) for t in
            ('/cam/color/image_raw', '/cam/color/camera_info', '/reference/image', '/reference/camera_info')}
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(tester)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs.values()):
            assert proc.poll() is None, f'node exited early:\n{proc.stdout.read()}'
            time.sleep(0.05)
        assert all(p.get_subscription_count() for p in pubs.values()), 'node did not subscribe in 60 s'
        ref_img, ref_info, _ = frame_to_messages(_frame(time.time_ns(), 'ref_cam'))
        while time.monotonic() < deadline and not received:
            pubs['/reference/image'].publish(ref_img)
            pubs['/reference/camera_info'].publish(ref_info)
            time.sleep(0.1)
            img, info, _ = frame_to_messages(_frame(time.time_ns(), 'live_cam'))
            pubs['/cam/color/image_raw'].publish(img)
            pubs['/cam/color/camera_info'].publish(info)
            time.sleep(0.1)
        assert received, 'no pose on the remapped /robot/relpose'
        msg = received[0]
        assert msg.header.frame_id == 'ref_cam' and msg.child_frame_id == 'live_cam'
        assert msg.transform.translation.z == pytest.approx(-1.0)  # T_ref_from_query = inverse of t=(0,0,1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f'relocalize_node did not exit within 20 s of SIGINT:\n{out}')
        executor.shutdown(timeout_sec=1)
        tester.destroy_node()
        rclpy.try_shutdown(context=context)
    assert proc.returncode == 0, out
    assert 'Traceback' not in out, out
    assert 'relocalize_node ready' in out


def test_invalid_parameter_exits_with_reason():
    proc = subprocess.run(_executable() + ['--ros-args', '-p', 'device:=tpu'], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert proc.returncode == 2
    assert 'device must be one of auto, cpu, cuda' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_bench_node_runs_and_reports_every_stage(tmp_path):
    """Smoke test of `relpose bench node` (numbers are not asserted: speed is measured by the bench)."""
    import json

    from relpose_ros.cli import main

    out = tmp_path / 'bench_node.json'
    assert main(['bench', 'node', '--frames', '3', '--warmup', '1', '--width', '160', '--height', '120',
                 '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result['stages']) == {'receive', 'convert', 'sync', 'build', 'publish', 'end_to_end'}
    assert result['overhead_ms'] == pytest.approx(sum(result['stages'][k]['mean_ms'] for k in
                                                      ('receive', 'convert', 'sync', 'build', 'publish')))
    assert all(s['mean_ms'] > 0 for s in result['stages'].values())

"""Shared test fixtures: isolated DDS per run, the shared data folder, CPU thread count."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('RELPOSE_SHARED', REPO.parent / 'shared'))
SEVEN_SCENES = SHARED / 'data' / '7scenes-1000'
GOLDEN_MICKEY = SHARED / 'golden' / 'mickey'

# DDS isolation: localhost only, and a per-run domain so parallel runs never see each other.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')


@pytest.fixture(scope='session')
def seven_scenes() -> Path:
    """Path of ../shared/data/7scenes-1000, or skip with the reason."""
    if not (SEVEN_SCENES / 'camera-intrinsics.txt').is_file():
        pytest.skip(f'7-Scenes data not found at {SEVEN_SCENES} (research-only data, read from ../shared)')
    return SEVEN_SCENES


@pytest.fixture(scope='session')
def golden_mickey() -> Path:
    """Path of ../shared/golden/mickey, or skip with the reason."""
    if not (GOLDEN_MICKEY / 'make_weights.py').is_file():
        pytest.skip(f'MicKey golden kit not found at {GOLDEN_MICKEY}')
    return GOLDEN_MICKEY


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch intra-op thread for the module: on a busy 2-core machine spinning OpenMP workers slow small
    models about 10x (use with ``pytestmark = pytest.mark.usefixtures('one_torch_thread')``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def context():
    """A private rclpy context for the module (real rclpy, shut down afterwards)."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)

"""Core library: Frame / PoseEstimate, geometry, registry, config merging, device selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros import geometry as geo
from relpose_ros.backends import available, backend_class, create
from relpose_ros.backends.base import merge_config
from relpose_ros.device import resolve_device
from relpose_ros.errors import ConfigError, FrameError
from relpose_ros.types import Frame, PoseEstimate

K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    return geo.quat_to_matrix(q)


def test_frame_accepts_valid_and_names_problems():
    rgb = np.zeros((48, 64, 3), np.uint8)
    f = Frame(rgb, K, depth=np.ones((48, 64), np.float32), stamp_ns=5, frame_id='cam')
    assert (f.width, f.height, f.has_depth) == (64, 48, True)
    cases = [
        (dict(rgb=np.zeros((48, 64), np.uint8)), 'HxWx3'),
        (dict(rgb=np.zeros((48, 64, 3), np.float32)), 'uint8'),
        (dict(rgb=np.zeros((0, 64, 3), np.uint8)), 'empty'),
        (dict(K=np.eye(2)), '3x3'),
        (dict(K=np.where(np.eye(3) > 0, np.nan, 0)), 'NaN'),
        (dict(K=np.zeros((3, 3))), 'focal'),
        (dict(depth=np.ones((10, 10), np.float32)), 'depth size'),
        (dict(depth=np.ones((48, 64), np.uint16)), 'float32'),
    ]
    for override, needle in cases:
        kwargs = dict(rgb=rgb, K=K, depth=None) | override
        with pytest.raises(FrameError, match=needle):
            Frame(**kwargs)


def test_pose_estimate_convention_and_failure():
    rng = np.random.default_rng(0)
    R, t = random_rotation(rng), rng.normal(size=3)
    est = PoseEstimate(R=R, t=t, confidence=0.7, ok=True)
    X_ref = rng.normal(size=(5, 3))
    X_query = (est.T_query_from_ref @ np.c_[X_ref, np.ones(5)].T).T[:, :3]
    assert np.allclose(X_query, X_ref @ R.T + t)
    # T_ref_from_query is the live camera's pose in the reference frame: its centre is -R^T t.
    assert np.allclose(est.T_ref_from_query[:3, 3], geo.camera_centre(R, t))
    assert np.allclose(est.T_ref_from_query @ est.T_query_from_ref, np.eye(4))
    bad = PoseEstimate(R=np.full((3, 3), np.nan), t=t, confidence=0.9, ok=True)
    assert not bad.ok and bad.confidence == 0.0 and np.all(np.isfinite(bad.R)) and bad.reason
    fail = PoseEstimate.failure('too few matches', score=float('nan'))
    assert not fail.ok and fail.confidence == 0 and fail.score == 0 and fail.reason == 'too few matches'
    assert PoseEstimate(ok=True, confidence=3.0).confidence == 1.0


def test_quaternions_roundtrip_and_ros_order():
    rng = np.random.default_rng(1)
    for _ in range(20):
        R = random_rotation(rng)
        q = geo.matrix_to_quat(R)
        assert q[0] >= 0 and np.isclose(np.linalg.norm(q), 1)
        assert np.allclose(geo.quat_to_matrix(q), R, atol=1e-12)
        assert np.allclose(geo.quat_xyzw_to_wxyz(geo.quat_wxyz_to_xyzw(q)), q)
    assert np.allclose(geo.quat_to_matrix([0, 0, 0, 1]), np.diag([-1, -1, 1]))  # 180 deg about z
    with pytest.raises(ValueError):
        geo.quat_to_matrix([0, 0, 0, 0])


def test_transforms_and_errors():
    rng = np.random.default_rng(2)
    Ta, Tb = geo.make_T(random_rotation(rng), rng.normal(size=3)), geo.make_T(random_rotation(rng), rng.normal(size=3))
    assert np.allclose(geo.compose(Ta, geo.inverse_T(Ta)), np.eye(4))
    T_q_r = geo.relative_pose(Ta, Tb)  # camera-to-world poses of ref (a) and query (b)
    assert np.allclose(geo.compose(Tb, T_q_r), Ta)
    R = geo.quat_to_matrix([np.cos(np.radians(5)), 0, np.sin(np.radians(5)), 0])  # 10 deg about y
    assert np.isclose(geo.rotation_error_deg(R, np.eye(3)), 10.0)
    assert np.isclose(geo.camera_centre_error(np.eye(3), [0, 0, 1], np.eye(3), [0, 0, 0.7]), 0.3)
    assert np.isclose(geo.translation_direction_error_deg([1, 0, 0], [0, 2, 0]), 90.0)
    assert np.isnan(geo.translation_direction_error_deg([0, 0, 0], [0, 2, 0]))


def test_intrinsics_and_projection():
    K2 = geo.resize_intrinsics(K, (640, 480), (320, 240))
    assert np.allclose(K2, [[250, 0, 160], [0, 250, 120], [0, 0, 1]])
    assert np.allclose(geo.crop_intrinsics(K, 10, 20)[:2, 2], [310, 220])
    uv = np.array([[100.0, 50.0], [320.0, 240.0], [600.0, 400.0]])
    X = geo.backproject(uv, [1.0, 2.0, 3.0], K)
    assert np.allclose(geo.project(X, K), uv) and np.allclose(X[:, 2], [1, 2, 3])
    Xt = geo.backproject_torch(torch.tensor(uv)[None], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)[None],
                               torch.tensor(K)[None])
    assert np.allclose(Xt[0].numpy(), X)


def test_batched_weighted_kabsch_recovers_pose_and_fixes_reflection():
    rng = np.random.default_rng(3)
    R = np.stack([random_rotation(rng) for _ in range(4)])
    t = rng.normal(size=(4, 3))
    X = rng.normal(size=(4, 50, 3))
    Y = np.einsum('bij,bnj->bni', R, X) + t[:, None]
    Y[:, :10] += rng.normal(size=(4, 10, 3))        # outliers, zero-weighted below
    w = np.ones((4, 50))
    w[:, :10] = 0
    R_est, t_est = geo.kabsch(torch.tensor(X), torch.tensor(Y), torch.tensor(w))
    assert np.allclose(R_est.numpy(), R, atol=1e-9) and np.allclose(t_est.numpy(), t, atol=1e-9)
    # A mirrored point set would give det -1 without the determinant fix.
    Xm = torch.tensor(X[:1, 10:])
    R_m, _ = geo.kabsch(Xm, Xm * torch.tensor([1.0, 1.0, -1.0]))
    assert torch.isclose(torch.linalg.det(R_m)[0], torch.tensor(1.0, dtype=torch.float64))


def test_registry_and_config():
    names = available()
    assert {'rgbd', 'mickey', 'regression', 'constant'} <= set(names)
    with pytest.raises(ConfigError, match='available: .*rgbd'):
        create('nope')
    with pytest.raises(ConfigError, match="unknown parameter 'x'.*known: a, b"):
        merge_config({'a': 1, 'b': {'c': 2}}, {'x': 1}, 'demo')
    merged = merge_config({'a': 1, 'b': {'c': 2, 'd': 3}}, {'b': {'c': 5}})
    assert merged == {'a': 1, 'b': {'c': 5, 'd': 3}}
    with pytest.raises(ConfigError, match='mapping'):
        merge_config({'b': {'c': 2}}, {'b': 3})


def test_device_selection():
    assert resolve_device('cpu').type == 'cpu'
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ConfigError, match='unknown device'):
        resolve_device('tpu')
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match='CUDA is not available'):
            resolve_device('cuda')


@pytest.mark.parametrize('name', ['rgbd', 'mickey', 'regression', 'constant'])
def test_every_registered_backend_implements_the_interface(name):
    cls = backend_class(name)
    assert cls.name == name
    assert callable(cls.prepare_reference) and callable(cls.estimate)
    assert cls.depth_usage in ('none', 'reference', 'any')
    assert isinstance(dict(cls.default_config), dict)

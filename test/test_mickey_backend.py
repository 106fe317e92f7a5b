"""MicKey backend with an injected small model: caching, input handling, failures, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.backends import create
from relpose_ros.backends.mickey import MickeyEstimator
from relpose_ros.errors import ConfigError, FrameError, WeightsError
from relpose_ros.models.mickey import MickeyConfig, MickeyModel
from relpose_ros.types import Frame

from test_mickey_model import textured_image


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def K_for(W: int, H: int, f: float = 200.0) -> np.ndarray:
    return np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])


@pytest.fixture(scope='module')
def model() -> MickeyModel:
    torch.manual_seed(0)
    return MickeyModel(MickeyConfig('vits14')).eval()


def make(model, **config) -> MickeyEstimator:
    cfg = {'image_size': [168, 126], 'num_sample_sets': 4, 'hypotheses_per_set': 50, 'min_inliers': 0}
    cfg.update(config)
    return MickeyEstimator(cfg, device='cpu', model=model)


def frame(W: int = 200, H: int = 150, dx: int = 0, dy: int = 0) -> Frame:
    return Frame(textured_image(H, W, dx, dy), K_for(W, H))


def test_reference_is_extracted_once(model):
    est = make(model)
    calls = []
    hook = model.extractor.register_forward_hook(lambda m, a, out: calls.append(out.grid))
    try:
        ref = est.prepare_reference(frame())
        assert len(calls) == 1 and 'extract' in ref.timings
        results = [est.estimate(ref, frame(dx=4, dy=2)) for _ in range(2)]
    finally:
        hook.remove()
    assert len(calls) == 3                      # one extraction per live frame, none for the reference
    a, b = results
    assert np.all(np.isfinite(a.R)) and np.all(np.isfinite(a.t)) and 0.0 <= a.confidence <= 1.0
    if a.ok:
        assert a.confidence == pytest.approx(min(1.0, a.score / 2048))
        assert np.allclose(a.R @ a.R.T, np.eye(3), atol=1e-5)
    else:
        assert a.reason and a.confidence == 0.0
    assert np.array_equal(a.R, b.R) and np.array_equal(a.t, b.t) and a.score == b.score   # deterministic
    assert {'preprocess', 'extract', 'match', 'sample'} <= set(a.timings)


def test_sampling_is_seeded_and_proportional(model):
    est = make(model, samples_per_set=64)
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(20, 30, generator=g) ** 8
    scores[:, :5] = 0.0                                            # never drawn while positive ones remain
    ref_pts, pts = torch.randn(20, 3, generator=g), torch.randn(30, 3, generator=g)
    X, Y, w = est.sample_correspondences(scores, ref_pts, pts)
    X2, _, _ = est.sample_correspondences(scores, ref_pts, pts)
    assert X.shape == (4, 64, 3) and Y.shape == (4, 64, 3) and w.shape == (4, 64)
    assert torch.equal(X, X2)
    assert bool((w > 0).all())
    # each drawn (X, Y, w) is a consistent (reference point, query point, score) triple
    i = torch.cdist(X.reshape(-1, 3), ref_pts).argmin(1)
    j = torch.cdist(Y.reshape(-1, 3), pts).argmin(1)
    assert torch.equal(scores[i, j], w.reshape(-1))
    assert est.sample_correspondences(torch.zeros(20, 30), ref_pts, pts).startswith('no surviving matches')
    nan = scores.clone()
    nan[0, 0] = float('nan')
    assert est.sample_correspondences(nan, ref_pts, pts) == 'non-finite network output'


@pytest.mark.parametrize('W,H,expect', [(640, 480, (168, 126)), (480, 640, (126, 168)), (200, 150, (168, 126)),
                                          (320, 180, (168, 94.5)), (180, 320, (94.5, 168))])
def test_processing_size_follows_orientation(model, W, H, expect):
    """The image is scaled into the [long, short] box in its own orientation, aspect ratio kept."""
    est = make(model)
    if 94.5 in expect:                        # 16:9 into a 4:3 box: the short side would be 94.5 px < 98
        with pytest.raises(FrameError, match='too small'):
            est.preprocess(frame(W, H))
        est = make(model, image_size=[336, 252])
        expect = tuple(int(round(v * 2)) for v in expect)  # (336, 189) / (189, 336)
    image, K = est.preprocess(frame(W, H))
    assert tuple(image.shape) == (1, 3, expect[1], expect[0])
    assert float(image.max()) <= 1.0 and float(image.min()) >= 0.0
    assert K[0, 0, 0].item() == pytest.approx(200.0 * expect[0] / W)
    assert K[0, 1, 1].item() == pytest.approx(200.0 * expect[1] / H)
    assert K[0, 0, 2].item() == pytest.approx(expect[0] / 2) and K[0, 1, 2].item() == pytest.approx(expect[1] / 2)


def test_native_size_and_portrait_estimate(model):
    est = make(model, image_size=[0, 0], backbone_fp16='false')       # ROS-friendly spellings
    assert est.model.extractor.backbone_fp16 is False
    ref = est.prepare_reference(frame(112, 140))
    assert ref.features['kp'].grid == (10, 8)
    res = est.estimate(ref, frame(112, 140, dx=3))
    assert np.all(np.isfinite(res.R)) and (res.ok or res.reason)


def assert_failure(res, needle: str) -> None:
    assert not res.ok and needle in res.reason and res.confidence == 0.0, res.reason
    assert np.array_equal(res.R, np.eye(3)) and np.all(res.t == 0)


def test_too_small_image(model):
    """A bad reference raises (the node reports it and clears the reference); a bad live frame is a failure."""
    est = make(model, image_size=[])
    with pytest.raises(FrameError, match=r'at least 7 patches.*98x98'):
        est.prepare_reference(frame(97, 150))
    ref = est.prepare_reference(frame(112, 112))
    res = est.estimate(ref, frame(97, 150))
    assert_failure(res, 'too small')
    assert 'query' in res.reason and '98x98' in res.reason and 'preprocess' in res.timings


def test_intrinsics_not_matching_image(model):
    est = make(model)
    bad = Frame(textured_image(150, 200), K_for(640, 480))   # K of a 640x480 camera on a 200x150 image
    with pytest.raises(FrameError, match='intrinsics do not match'):
        est.prepare_reference(bad)
    assert_failure(est.estimate(est.prepare_reference(frame()), bad), 'intrinsics do not match')


def test_invalid_live_frame_is_a_failure_not_an_exception(model):
    est = make(model)
    ref = est.prepare_reference(frame())
    broken = frame()
    broken.K = broken.K.copy()
    broken.K[0, 0] = np.nan                                   # changed after construction: estimate validates
    assert_failure(est.estimate(ref, broken), 'K contains NaN')


def test_confidence_is_normalised_by_the_correspondences_per_set(model):
    """confidence = score / min(samples_per_set, M*N): with fewer candidate matches than samples_per_set every
    one of the M*N is in the set."""
    est = make(model, samples_per_set=10 ** 6, num_sample_sets=1)
    ref = est.prepare_reference(frame())
    res = est.estimate(ref, frame(dx=4, dy=2))
    M = N = ref.features['kp'].kps.shape[-1]                  # 9x12 grid at 168x126
    assert M * N < 10 ** 6
    assert res.ok, res.reason
    assert res.confidence == pytest.approx(min(1.0, res.score / (M * N)))


def test_textureless_frame_fails_cleanly(model):
    est = make(model)
    ref = est.prepare_reference(frame())
    flat = Frame(np.full((150, 200, 3), 128, np.uint8), K_for(200, 150))
    res = est.estimate(ref, flat)
    assert not res.ok and 'textureless' in res.reason and res.confidence == 0.0
    res = est.estimate(est.prepare_reference(flat), frame())
    assert not res.ok and res.reason.startswith('reference: textureless')


def test_single_scored_cell_means_no_surviving_matches(model):
    """A 7x7 patch grid keeps one cell inside the 3-cell score border: too few matches for a pose."""
    est = make(model, image_size=[])
    ref = est.prepare_reference(frame(98, 98))
    res = est.estimate(ref, frame(98, 98, dx=2))
    assert not res.ok and 'no surviving matches' in res.reason and res.confidence == 0.0
    assert np.array_equal(res.R, np.eye(3)) and np.all(res.t == 0)


def test_min_inliers_gate(model):
    est = make(model, min_inliers=10 ** 6)
    res = est.estimate(est.prepare_reference(frame()), frame(dx=4))
    assert not res.ok and res.confidence == 0.0
    assert 'too few inliers' in res.reason or 'solver' in res.reason


def test_configuration_errors(tmp_path):
    with pytest.raises(WeightsError, match='mickey.checkpoint is not set'):
        create('mickey', {}, device='cpu')
    with pytest.raises(WeightsError, match='not found'):
        create('mickey', {'checkpoint': str(tmp_path / 'missing.ckpt')}, device='cpu')
    with pytest.raises(ConfigError, match='unknown parameter'):
        create('mickey', {'no_such_option': 1}, device='cpu')
    with pytest.raises(ConfigError, match='image_size'):
        create('mickey', {'image_size': [50, 40]}, device='cpu')
    with pytest.raises(ConfigError, match='backbone_fp16'):
        create('mickey', {'backbone_fp16': 'sometimes'}, device='cpu')
    assert MickeyEstimator.depth_usage == 'none' and MickeyEstimator.name == 'mickey'


def test_params_file_section_matches_defaults():
    import yaml
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / 'config' / 'relocalize.yaml'
    section = yaml.safe_load(path.read_text())['relocalize_node']['ros__parameters']['mickey']
    assert set(section) == set(MickeyEstimator.default_config)
    for key, value in section.items():
        assert value == MickeyEstimator.default_config[key], key


def test_bench_runs_and_reports(tmp_path, capsys):
    """The benchmark's code path (small backbone, tiny size, one repeat): table printed, JSON complete."""
    import json

    from relpose_ros.cli import main

    out = tmp_path / 'bench.json'
    assert main(['bench', 'mickey', '--backbone', 'vits14', '--sizes', '112x126', '--repeats', '1',
                 '--threads', '1', '--device', 'cpu', '--json', str(out)]) == 0
    assert 'ratio' in capsys.readouterr().out
    result = json.loads(out.read_text())
    row, = result['rows']
    assert row['size'] == '112x126' and row['grid'] == [8, 9]
    assert row['live_ms'] > 0 and row['pair_ms'] > 0 and row['ratio'] == pytest.approx(row['live_ms'] / row['pair_ms'])
    assert row['peak_rss_mb'] > 0 and 'extract' in row['stages_ms']
    assert result['weights'] == 'random initialisation' and result['device'] == 'cpu'
    # per-size, per-mode memory measured from a reset (Linux /proc); the old lifetime peak key stays
    if result['rss_method'] is not None:
        assert result['rss_method'] in ('vmhwm', 'sampled') and result['load_rss_mb'] > 0
        for mode in ('live', 'pair'):
            assert 0 <= row[f'{mode}_extra_rss_mb'] <= row[f'{mode}_peak_rss_mb'] <= row['peak_rss_mb'] + 1
        assert row['rss_before_mb'] > 0


@pytest.mark.parametrize('method', ['vmhwm', 'sampled'])
def test_bench_rss_probe_resets_per_measurement(method):
    """Each measurement starts from a reset: a large allocation inside the first block does not show up in
    the second (a process-lifetime peak such as ru_maxrss would report it in both)."""
    import time

    from relpose_ros.bench.mickey import RssProbe, release_memory

    auto = RssProbe('auto')
    if auto.method is None:
        pytest.skip('no /proc/self/status (not Linux)')
    if method == 'vmhwm' and auto.method != 'vmhwm':
        pytest.skip('this kernel does not allow resetting VmHWM (/proc/self/clear_refs)')
    probe = RssProbe(method)
    release_memory()
    with probe.measure() as big:
        a = np.ones(160 * 2 ** 20 // 8)                     # 160 MB, every page touched
        time.sleep(0.05)
        del a
    release_memory()
    with probe.measure() as small:
        b = np.ones(2 ** 20 // 8)
        time.sleep(0.05)
        del b
    assert big['extra_mb'] > 120, big
    assert small['extra_mb'] < 40 and small['peak_mb'] < big['peak_mb'] - 80, (big, small)
    with pytest.raises(ValueError, match='method'):
        RssProbe('sometimes')


@pytest.mark.parametrize('oversample,rounds', [(2, 1), (1, 0)])   # (1, 0): most sets use the exact completion
def test_draw_without_replacement_matches_successive_sampling(oversample, rounds):
    from relpose_ros.backends.mickey import draw_without_replacement

    g = torch.Generator().manual_seed(5)
    w = torch.tensor([0.0, 1, 2, 3, 4, 10, 0, 5, 0.5, 0.5])
    S = 20000
    ours = draw_without_replacement(w, S, 3, g, oversample=oversample, rounds=rounds)
    ref = torch.multinomial((w / w.sum()).expand(S, -1), 3, replacement=False, generator=g)
    assert ours.shape == (S, 3)
    assert bool((ours[:, 0] != ours[:, 1]).all() & (ours[:, 1] != ours[:, 2]).all() & (ours[:, 0] != ours[:, 2]).all())
    assert not bool(((ours == 0) | (ours == 6)).any())                 # zero weights never drawn
    for k in range(3):                                                 # same law for every draw position
        f_ours = torch.bincount(ours[:, k], minlength=10) / S
        f_ref = torch.bincount(ref[:, k], minlength=10) / S
        assert float((f_ours - f_ref).abs().max()) < 0.015, k
    # fewer positive weights than draws: the positives first (in some order), then zero-weight indices
    few = draw_without_replacement(torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0]), 4, 4, g)
    assert all(set(row[:2].tolist()) == {0, 1} and len(set(row.tolist())) == 4 for row in few)


def test_draw_without_replacement_batched_rows_use_their_own_weights():
    from relpose_ros.backends.mickey import draw_without_replacement

    g = torch.Generator().manual_seed(6)
    W = torch.stack([torch.tensor([0.0, 1, 2, 3, 4, 10, 0, 5, 0.5, 0.5]),
                     torch.tensor([5.0, 1, 0, 0, 1, 1, 1, 1, 1, 1])])
    ours = draw_without_replacement(W, 20000, 3, g)                    # the MicKey minimal-set draw
    assert ours.shape == (2, 20000, 3)
    for b in range(2):
        ref = torch.multinomial((W[b] / W[b].sum()).expand(20000, -1), 3, replacement=False, generator=g)
        for k in range(3):
            diff = (torch.bincount(ours[b, :, k], minlength=10) - torch.bincount(ref[:, k], minlength=10)).abs()
            assert float(diff.max()) / 20000 < 0.015
    assert not bool((ours[1] == 2).any() | (ours[1] == 3).any() | (ours[0] == 0).any())


def test_reference_and_live_may_differ_in_size_and_orientation(model):
    est = make(model, image_size=[0, 0])
    ref = est.prepare_reference(frame(200, 150))                       # landscape 14x10 grid
    res = est.estimate(ref, Frame(textured_image(160, 120), K_for(120, 160)))   # portrait 8x11 grid
    assert np.all(np.isfinite(res.R)) and np.all(np.isfinite(res.t)) and (res.ok or res.reason)

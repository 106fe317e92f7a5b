"""Features for the rgbd backend: RootSIFT, the mutual-ratio matcher, depth cleaning / sampling / registration,
and learned kornia models loaded from local weight files generated here."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from relpose_ros.errors import ConfigError, WeightsError
from relpose_ros.features import auto_extractor, build_pipeline, root_sift
from relpose_ros.features.depth import clean_depth, register_depth, sample_depth
from relpose_ros.features.matching import mutual_ratio_match
from relpose_ros.geometry import rotation_error_deg
from relpose_ros.types import Frame, PoseEstimate


def test_root_sift_is_hellinger_normalised():
    d = torch.rand(50, 128) * 255
    r = root_sift(d)
    assert torch.allclose(r.norm(dim=1), torch.ones(50), atol=1e-5)
    assert torch.allclose(r * r, d / d.sum(1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize('mutual', [True, False])
@pytest.mark.parametrize('ratio', [0.8, 0.95])
def test_mutual_ratio_match_agrees_with_kornia(mutual, ratio):
    import kornia.feature as KF

    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.rand(300, 64, generator=g), dim=1)
    noisy = a[:150] + 0.05 * torch.rand(150, 64, generator=g)
    b = torch.nn.functional.normalize(torch.cat([noisy, torch.rand(200, 64, generator=g)]), dim=1)
    b = b[torch.randperm(350, generator=g)]
    dists, idx = (KF.match_smnn if mutual else KF.match_snn)(a, b, ratio)
    ia, ib, r = mutual_ratio_match(a, b, ratio, mutual)
    assert set(zip(ia.tolist(), ib.tolist())) == set(map(tuple, idx.tolist()))
    order = torch.argsort(ia)
    assert torch.allclose(r[order], dists[:, 0], atol=1e-4)
    assert len(ia) >= 100


def test_clean_depth_drops_edges_holes_and_range():
    d = np.full((40, 60), 1.0, np.float32)
    d[:, 30:] = 2.0                         # a 1 m step at column 30
    d[5, 5] = np.nan                        # a hole
    d[35, 50] = 20.0                        # out of range
    c = clean_depth(d, min_m=0.1, max_m=10.0, window=5)
    assert np.isnan(c[20, 28:32]).all()     # next to the step
    assert np.isnan(c[5, 3:8]).all()        # around the hole
    assert np.isnan(c[35, 50])
    assert c[20, 10] == 1.0 and c[20, 45] == 2.0
    smooth = np.tile(np.linspace(1.0, 1.2, 60, dtype=np.float32), (40, 1))   # a slanted plane stays
    assert np.isfinite(clean_depth(smooth)[2:-2, 2:-2]).all()


def test_sample_depth_bilinear_nan_and_outside():
    x = np.arange(60, dtype=np.float32)
    d = torch.from_numpy(np.tile(1.0 + 0.01 * x, (40, 1)))
    uv = torch.tensor([[10.25, 5.5], [0.0, 0.0], [59.0, 39.0], [-1.0, 3.0], [30.0, 40.5]])
    s = sample_depth(d, uv)
    assert torch.allclose(s[:3], torch.tensor([1.1025, 1.0, 1.59]), atol=1e-6)
    assert torch.isnan(s[3:]).all()
    d[5, 11] = float('nan')
    assert torch.isnan(sample_depth(d, uv[:1]))[0]


def test_register_depth_identity_and_zoom():
    rng = np.random.default_rng(0)
    d = rng.uniform(1, 3, (48, 64)).astype(np.float32)
    K = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    assert np.array_equal(register_depth(d, K, K), d)
    Kc = K.copy()
    Kc[0, 0] = Kc[1, 1] = 30.0             # colour camera: twice the field of view
    r = register_depth(d, K, Kc)
    assert r[24, 32] == d[24, 32] and r[24, 33] == d[24, 34]
    assert np.isnan(r[0, 0]) and np.isnan(r[24, 63])


def test_auto_picks_opencv_sift_on_cpu():
    assert auto_extractor(torch.device('cpu')) == 'opencv_sift'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_auto_measures_both_sifts_on_cuda():
    assert auto_extractor(torch.device('cuda')) in ('opencv_sift', 'kornia_sift')


def test_opencv_and_kornia_sift_share_the_interface():
    rng = np.random.default_rng(0)
    img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    for name in ('opencv_sift', 'kornia_sift'):
        ext, mat = build_pipeline(name, 'auto', {'num_features': 300}, torch.device('cpu'))
        f = ext.extract(img)
        assert f.keypoints.shape[1] == 2 and f.descriptors.shape == (len(f), 128) and len(f) > 20
        assert torch.allclose(f.descriptors.norm(dim=1), torch.ones(len(f)), atol=1e-4)
        m = mat.match(f, f)                 # an image against itself: every match is a keypoint with itself
        assert len(m) >= 0.3 * len(f) and torch.equal(m.kp_a, m.kp_b)   # (near-duplicates fail the ratio test)


# ----------------------------------------------------------------------------- learned, local weights only


def _nearest_neighbour_lightglue(random_sd: dict[str, torch.Tensor], scale: float = 2000.0
                                 ) -> dict[str, torch.Tensor]:
    """A LightGlue state dict (every key and shape of the model) that is a mutual nearest-neighbour matcher:
    ``input_proj`` copies the 128-d descriptor into the first channels, every attention block adds nothing (the
    last FFN layer is zero, so ``x + ffn(...) = x``), each assignment head compares descriptors by a scaled dot
    product (``final_proj = scale * I``) and calls every point matchable. On unit descriptors the dot product
    ranks like the distance, so a keypoint's best match in the same image is itself; ``scale`` makes the dual
    softmax sharp enough for random ALIKED descriptors, which lie within 1e-4 in cosine of each other."""
    sd = {k: v.clone() for k, v in random_sd.items()}
    proj = sd['input_proj.weight']                       # (256, 128)
    sd['input_proj.weight'] = torch.cat([torch.eye(proj.shape[1]), torch.zeros(proj.shape[0] - proj.shape[1],
                                                                                proj.shape[1])])
    sd['input_proj.bias'] = torch.zeros(proj.shape[0])
    for k, v in sd.items():
        if '.ffn.3.' in k or k.endswith(('final_proj.bias', 'matchability.weight')):
            v.zero_()
        elif k.endswith('final_proj.weight'):
            sd[k] = scale * torch.eye(v.shape[0])
        elif k.endswith('matchability.bias'):
            v.fill_(10.0)                                # sigmoid(10): every point matchable, none pruned
    return sd


def _self_matching_loftr(random_sd: dict[str, torch.Tensor], gain: float = 100.0) -> dict[str, torch.Tensor]:
    """A LoFTR state dict (random backbone, every key and shape of the model) whose matches are predictable:
    the first coarse layer adds ``gain * LayerNorm(x)`` to its input (its MLP passes x through:
    ``W2 relu(W1 [x, m]) = x`` with W1 = [[I, 0], [-I, 0]], W2 = [I, -I]; ``norm2`` weight = gain), the other
    coarse and fine layers add nothing (``norm2`` zero) and the fine stage sees zero features (``merge_feat``
    zero: a uniform heatmap, so no keypoint moves). The coarse features are then dominated by LayerNorm outputs,
    which all have the same norm, so a coarse cell's most similar cell in the same image is itself."""
    sd = {k: v.clone() for k, v in random_sd.items()}
    for k, v in sd.items():
        if (k.startswith(('loftr_coarse.layers.', 'loftr_fine.layers.')) and '.norm2.' in k) \
                or k.startswith('fine_preprocess.merge_feat.'):
            v.zero_()
    d = sd['loftr_coarse.layers.0.norm2.weight'].shape[0]
    eye, zero = torch.eye(d), torch.zeros(d, d)
    sd['loftr_coarse.layers.0.mlp.0.weight'] = torch.cat([torch.cat([eye, zero], 1), torch.cat([-eye, zero], 1)])
    sd['loftr_coarse.layers.0.mlp.2.weight'] = torch.cat([eye, -eye], 1)
    sd['loftr_coarse.layers.0.norm2.weight'].fill_(gain)
    return sd


@pytest.fixture(scope='module')
def random_weights(tmp_path_factory):
    """State dicts of freshly constructed kornia models (random weights), saved like user files, and two
    derived files that make matching predictable (``lightglue_*_nn``, ``loftr_self``, see above)."""
    import kornia.feature as KF
    from kornia.feature.loftr.loftr import default_cfg

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('weights')
    names = ('disk.pth', 'lightglue_disk.pth', 'loftr.ckpt', 'aliked.pth', 'lightglue_aliked.pth',
             'aliked_t16.pth', 'lightglue_disk_nn.pth', 'lightglue_aliked_nn.pth', 'loftr_self.pth')
    paths = {n.split('.')[0]: root / n for n in names}
    torch.save({'extractor': KF.DISK(desc_dim=128).state_dict()}, paths['disk'])
    conf = {k: v for k, v in KF.LightGlue.features['disk'].items() if k != 'weights'}
    lightglue_disk = KF.LightGlue(features=None, **conf).state_dict()
    torch.save(lightglue_disk, paths['lightglue_disk'])
    loftr = KF.LoFTR(pretrained=None, config=copy.deepcopy(default_cfg)).state_dict()
    torch.save({'state_dict': {'matcher.' + k: v for k, v in loftr.items()}}, paths['loftr'])
    torch.manual_seed(1)
    torch.save(KF.ALIKED(model_name='aliked-n16').state_dict(), paths['aliked'])
    conf = {k: v for k, v in KF.LightGlue.features['aliked'].items() if k != 'weights'}
    lightglue_aliked = KF.LightGlue(features=None, **conf).state_dict()
    torch.save(lightglue_aliked, paths['lightglue_aliked'])
    torch.save(KF.ALIKED(model_name='aliked-t16').state_dict(), paths['aliked_t16'])   # 64-d: other shapes
    torch.save(_nearest_neighbour_lightglue(lightglue_disk), paths['lightglue_disk_nn'])
    torch.save(_nearest_neighbour_lightglue(lightglue_aliked), paths['lightglue_aliked_nn'])
    torch.save(_self_matching_loftr(loftr), paths['loftr_self'])
    return paths


@pytest.fixture(scope='module')
def small_pair():
    from relpose_ros.data.synthetic import render_pair

    return render_pair(width=160, height=120, seed=5, translation=(0.1, 0.0, 0.05), yaw_deg=5.0)


def _assert_clean(out: PoseEstimate) -> None:
    """The backend's contract for any input: a finite pose and confidence in [0, 1]; a failure has a reason
    and confidence 0."""
    assert np.all(np.isfinite(out.R)) and np.all(np.isfinite(out.t)) and np.isfinite(out.score)
    assert 0.0 <= out.confidence <= 1.0
    if not out.ok:
        assert out.reason and out.confidence == 0.0


def _assert_identity(out: PoseEstimate, method: str = '3d-3d') -> None:
    """An image against itself: the pose stages ran and returned the identity with high confidence."""
    assert out.ok and out.reason == method, out.reason
    assert rotation_error_deg(out.R, np.eye(3)) < 0.01 and np.linalg.norm(out.t) < 1e-3
    assert out.confidence > 0.9


def _without_depth(frame: Frame) -> Frame:
    return Frame(rgb=frame.rgb, K=frame.K, depth=None)


@pytest.mark.slow
def test_disk_lightglue_loads_local_weights_and_runs(random_weights, small_pair):
    from relpose_ros.backends import create

    cfg = {'extractor': 'disk', 'num_features': 256,
           'weights': {'extractor': str(random_weights['disk']), 'matcher': str(random_weights['lightglue_disk'])}}
    est = create('rgbd', cfg, device='cpu')
    assert est.describe()['matcher'] == 'lightglue'
    ref = est.prepare_reference(small_pair.reference.frame)
    assert len(ref.features.features) > 0 and ref.features.features.descriptors.shape[1] == 128
    out = est.estimate(ref, small_pair.query.frame)      # random weights: any outcome, but a clean one
    assert np.all(np.isfinite(out.R)) and np.all(np.isfinite(out.t)) and 0.0 <= out.confidence <= 1.0
    assert out.ok or out.reason


@pytest.mark.slow
def test_loftr_loads_local_lightning_style_checkpoint_and_runs(random_weights, small_pair, one_torch_thread):
    ext, mat = build_pipeline('loftr', 'auto', {'weights': {'matcher': str(random_weights['loftr'])}},
                              torch.device('cpu'))
    a = ext.extract(small_pair.reference.frame.rgb)
    m = mat.match(a, ext.extract(small_pair.query.frame.rgb))
    assert a.image.shape == (1, 1, 120, 160)
    assert m.kp_a.shape == m.kp_b.shape and m.kp_a.shape[1] == 2 and m.scores.shape == (len(m),)


@pytest.mark.slow
def test_aliked_lightglue_loads_local_weights_and_runs(random_weights, small_pair):
    from relpose_ros.backends import create

    cfg = {'extractor': 'aliked', 'num_features': 256,
           'weights': {'extractor': str(random_weights['aliked']), 'matcher': str(random_weights['lightglue_aliked'])}}
    est = create('rgbd', cfg, device='cpu')
    assert est.describe()['extractor'] == 'aliked' and est.describe()['matcher'] == 'lightglue'
    assert est.extractor.model.model_name == 'aliked-n16'
    ref = est.prepare_reference(small_pair.reference.frame)
    f = ref.features.features
    assert len(f) > 0 and f.descriptors.shape == (len(f), 128) and ref.features.points.shape == (len(f), 3)
    assert torch.allclose(f.descriptors.norm(dim=1), torch.ones(len(f)), atol=1e-4)
    assert torch.isfinite(ref.features.points).all()    # only reference keypoints with depth are kept
    for frame in (small_pair.reference.frame, small_pair.query.frame):   # random LightGlue: any clean outcome
        _assert_clean(est.estimate(ref, frame))


@pytest.mark.slow
@pytest.mark.parametrize('extractor', ['disk', 'aliked'])
def test_lightglue_matches_run_the_pose_stages(random_weights, small_pair, extractor, one_torch_thread):
    """Random extractor weights + the nearest-neighbour LightGlue file: LightGlue's indices must reach the right
    reference 3-D points, so an image against itself gives the identity (3-D/3-D and PnP) and the real pair
    its ground-truth pose."""
    from relpose_ros.backends import create

    cfg = {'extractor': extractor, 'num_features': 256,
           'weights': {'extractor': str(random_weights[extractor]),
                       'matcher': str(random_weights[f'lightglue_{extractor}_nn'])}}
    est = create('rgbd', cfg, device='cpu')
    ref = est.prepare_reference(small_pair.reference.frame)
    f = ref.features.features
    m = est.matcher.match(f, est.extractor.extract(small_pair.reference.frame.rgb))
    assert len(m) >= 0.9 * len(f) and torch.equal(m.kp_a, m.kp_b) and torch.equal(m.kp_a, f.keypoints[m.idx_a])
    assert float(m.scores.min()) > 0.1 and float(m.scores.max()) <= 1.0
    _assert_identity(est.estimate(ref, small_pair.reference.frame))
    _assert_identity(est.estimate(ref, _without_depth(small_pair.reference.frame)), 'pnp')
    # different views: random conv descriptors + mutual nearest neighbours still match this textured pair
    # (measured: 0.03 / 0.07 deg and 1-2 mm for DISK / ALIKED); the bound only guards against wrong indices
    out = est.estimate(ref, small_pair.query.frame)
    T = small_pair.T_query_from_ref
    assert out.ok and out.reason == '3d-3d', out.reason
    assert rotation_error_deg(out.R, T[:3, :3]) < 0.5 and np.linalg.norm(out.t - T[:3, 3]) < 0.01


@pytest.mark.slow
def test_loftr_through_the_backend(random_weights, small_pair):
    """LoFTR has no descriptors: the reference keeps its grey image, and matches are lifted from the cached
    depth. Random weights: any clean outcome (in practice no match passes LoFTR's 0.2 threshold)."""
    from relpose_ros.backends import create

    est = create('rgbd', {'extractor': 'loftr', 'weights': {'matcher': str(random_weights['loftr'])}},
                 device='cpu')
    assert est.describe()['extractor'] == 'loftr' and est.describe()['matcher'] == 'loftr'
    ref = est.prepare_reference(small_pair.reference.frame)
    f = ref.features.features
    assert f.descriptors is None and len(f) == 0 and f.image.shape == (1, 1, 120, 160)
    assert ref.features.depth.shape == (120, 160)
    for frame in (small_pair.reference.frame, small_pair.query.frame, _without_depth(small_pair.query.frame)):
        _assert_clean(est.estimate(ref, frame))


@pytest.mark.slow
def test_loftr_matches_run_the_descriptor_free_pose_stages(random_weights, small_pair, one_torch_thread):
    """The self-matching LoFTR file: an image against itself matches every inner coarse cell with itself, at
    integer-centred pixel coordinates (kornia's LoFTR keypoints shifted by -0.5), and the pose stages lift
    them from the reference's depth (no ``idx_a``) to the identity, 3-D/3-D and PnP. Other views get
    position-biased matches, so only a clean outcome is asserted there."""
    from relpose_ros.backends import create

    est = create('rgbd', {'extractor': 'loftr', 'weights': {'matcher': str(random_weights['loftr_self'])}},
                 device='cpu')
    ref = est.prepare_reference(small_pair.reference.frame)
    m = est.matcher.match(ref.features.features, est.extractor.extract(small_pair.reference.frame.rgb))
    inner = (160 // 8 - 4) * (120 // 8 - 4)             # coarse cells without the border_rm = 2 margin
    assert m.idx_a is None and len(m) >= 0.9 * inner and torch.equal(m.kp_a, m.kp_b)
    assert torch.all(torch.remainder(m.kp_a + 0.5, 8) == 0) and float(m.scores.min()) > 0.2
    _assert_identity(est.estimate(ref, small_pair.reference.frame))
    _assert_identity(est.estimate(ref, _without_depth(small_pair.reference.frame)), 'pnp')
    _assert_clean(est.estimate(ref, small_pair.query.frame))


def test_missing_or_mismatched_aliked_weights_name_the_file(random_weights, tmp_path):
    from relpose_ros.backends import create

    def cfg(extractor_path, matcher_path=random_weights['lightglue_aliked']):
        return {'extractor': 'aliked', 'weights': {'extractor': str(extractor_path), 'matcher': str(matcher_path)}}

    with pytest.raises(WeightsError, match=r'ALIKED weights file not found: .*no_aliked\.pth'):
        create('rgbd', cfg(tmp_path / 'no_aliked.pth'), device='cpu')
    with pytest.raises(WeightsError, match=r'ALIKED weights file .*disk\.pth does not match the model'):
        create('rgbd', cfg(random_weights['disk']), device='cpu')           # DISK keys
    with pytest.raises(WeightsError, match=r'ALIKED weights file .*aliked_t16\.pth does not match the model'):
        create('rgbd', cfg(random_weights['aliked_t16']), device='cpu')     # aliked-t16: other shapes
    with pytest.raises(WeightsError, match=r'LightGlue \(aliked\) weights file .*aliked\.pth does not match'):
        create('rgbd', cfg(random_weights['aliked'], random_weights['aliked']), device='cpu')
    with pytest.raises(WeightsError, match='local weights file'):
        create('rgbd', {'extractor': 'aliked'}, device='cpu')


def test_missing_or_mismatched_weights_name_the_file(random_weights, tmp_path):
    missing = tmp_path / 'nope.pth'
    with pytest.raises(WeightsError, match='nope.pth'):
        build_pipeline('disk', 'lightglue', {'weights': {'extractor': str(missing),
                                                         'matcher': str(random_weights['lightglue_disk'])}},
                       torch.device('cpu'))
    with pytest.raises(WeightsError, match='lightglue_disk.pth'):   # LightGlue weights are not DISK weights
        build_pipeline('disk', 'mnn_ratio', {'weights': {'extractor': str(random_weights['lightglue_disk'])}},
                       torch.device('cpu'))
    with pytest.raises(WeightsError, match='local weights file'):
        build_pipeline('loftr', 'loftr', {'weights': {'matcher': ''}}, torch.device('cpu'))
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(WeightsError, match='junk.pth'):
        build_pipeline('loftr', 'loftr', {'weights': {'matcher': str(junk)}}, torch.device('cpu'))


def test_incompatible_matcher_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot match 'loftr'"):
        build_pipeline('loftr', 'mnn_ratio', {}, torch.device('cpu'))


def test_released_style_lightglue_file_without_derived_buffers_loads(random_weights, tmp_path):
    """Released LightGlue files name layers self_attn.i / cross_attn.i and lack the derived buffers."""
    sd = torch.load(random_weights['lightglue_disk'])
    old = {}
    for k, v in sd.items():
        if k == 'confidence_thresholds':
            continue
        for kind in ('self_attn', 'cross_attn'):
            for i in range(9):
                k = k.replace(f'transformers.{i}.{kind}.', f'{kind}.{i}.')
        old[k] = v
    path = tmp_path / 'disk_lightglue_released.pth'
    torch.save(old, path)
    _, mat = build_pipeline('disk', 'lightglue', {'weights': {'extractor': str(random_weights['disk']),
                                                               'matcher': str(path)}}, torch.device('cpu'))
    loaded = mat.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())

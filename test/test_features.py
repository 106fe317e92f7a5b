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


@pytest.fixture(scope='module')
def random_weights(tmp_path_factory):
    """State dicts of freshly constructed kornia models (random weights), saved like user files."""
    import kornia.feature as KF
    from kornia.feature.loftr.loftr import default_cfg

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('weights')
    paths = {'disk': root / 'disk.pth', 'lightglue_disk': root / 'lightglue_disk.pth', 'loftr': root / 'loftr.ckpt'}
    torch.save({'extractor': KF.DISK(desc_dim=128).state_dict()}, paths['disk'])
    conf = {k: v for k, v in KF.LightGlue.features['disk'].items() if k != 'weights'}
    torch.save(KF.LightGlue(features=None, **conf).state_dict(), paths['lightglue_disk'])
    loftr = KF.LoFTR(pretrained=None, config=copy.deepcopy(default_cfg)).state_dict()
    torch.save({'state_dict': {'matcher.' + k: v for k, v in loftr.items()}}, paths['loftr'])
    return paths


@pytest.fixture(scope='module')
def small_pair():
    from relpose_ros.data.synthetic import render_pair

    return render_pair(width=160, height=120, seed=5, translation=(0.1, 0.0, 0.05), yaw_deg=5.0)


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
def test_loftr_loads_local_lightning_style_checkpoint_and_runs(random_weights, small_pair):
    ext, mat = build_pipeline('loftr', 'auto', {'weights': {'matcher': str(random_weights['loftr'])}},
                              torch.device('cpu'))
    a = ext.extract(small_pair.reference.frame.rgb)
    m = mat.match(a, ext.extract(small_pair.query.frame.rgb))
    assert a.image.shape == (1, 1, 120, 160)
    assert m.kp_a.shape == m.kp_b.shape and m.kp_a.shape[1] == 2 and m.scores.shape == (len(m),)


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

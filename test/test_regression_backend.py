"""The regression backend: loads the checkpoint training writes (same outputs), fails loudly on bad weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.backends import create
from relpose_ros.data.synthetic import SyntheticSequence
from relpose_ros.errors import ConfigError, WeightsError
from relpose_ros.models.regression import pose_to_T_query_from_ref
from relpose_ros.models.regression.loftr import LoFTRCoarse
from relpose_ros.train.config import train_config
from relpose_ros.train.data import network_size, to_gray
from relpose_ros.train.run import prepare

TINY_MODEL = {'image_size': [16, 24], 'head_channels': [32, 16], 'mlp_hidden': 16}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(checkpoint path, trained Lightning module, the synthetic sequence) after 2 training steps."""
    out = tmp_path_factory.mktemp('regression-train')
    seq = SyntheticSequence(num_frames=5, width=48, height=32, seed=2, use_depth=False)
    cfg = train_config({
        'out_dir': str(out), 'model': {**TINY_MODEL, 'unfreeze_loftr': 'transformer'},
        'data': {'train': [{'dataset': 'syn'}], 'pairs': {'mode': 'gap', 'min_gap': 1, 'max_gap': 2},
                 'pairs_per_epoch': 4, 'batch_size': 2, 'augment': False},
        'optim': {'lr': 1e-3},
        'train': {'max_steps': 2, 'accelerator': 'cpu', 'progress_bar': False, 'log_every_n_steps': 1}})
    dm, module, trainer = prepare(cfg, {'syn': seq})
    trainer.fit(module, datamodule=dm)
    return out / 'checkpoints' / 'last.ckpt', module, seq


def test_checkpoint_from_training_gives_identical_outputs(trained):
    ckpt, module, seq = trained
    est = create('regression', {'checkpoint': str(ckpt)}, device='cpu')
    ref, query = seq[0].frame, seq[2].frame
    got = est.estimate(est.prepare_reference(ref), query)
    assert got.ok and got.is_finite() and 0.0 <= got.confidence <= 1.0
    model = module.model.eval()
    size = network_size(TINY_MODEL['image_size'], ref.height, ref.width)
    gq, gr = (torch.from_numpy(to_gray(f.rgb, size)).float().div(255)[None, None] for f in (query, ref))
    with torch.no_grad():
        out = model(gq, gr)
    R, t = pose_to_T_query_from_ref(out['quat'][0].numpy(), out['dir'][0].numpy(), float(out['scale'][0]))
    assert np.allclose(got.R, R, atol=1e-5) and np.allclose(got.t, t, atol=1e-5)
    assert got.confidence == pytest.approx(float(out['confidence'][0]), abs=1e-6)
    # the estimate is T_query_from_ref: the network's T_ref_from_query inverted
    assert np.allclose(got.T_ref_from_query[:3, 3], (out['dir'][0] * out['scale'][0]).numpy(), atol=1e-5)


def test_cached_reference_equals_pair_estimate_and_never_nan(trained):
    ckpt, _module, seq = trained
    est = create('regression', {'checkpoint': str(ckpt)}, device='cpu')
    ref = est.prepare_reference(seq[0].frame)
    a, b = est.estimate(ref, seq[1].frame), est.estimate_pair(seq[0].frame, seq[1].frame)
    assert np.allclose(a.R, b.R) and np.allclose(a.t, b.t)
    assert 'backbone' in a.timings and 'regress' in a.timings
    black = seq[1].frame
    black.rgb = np.zeros_like(black.rgb)
    res = est.estimate(ref, black)
    assert res.is_finite() and np.isfinite(res.confidence)


def test_missing_or_unset_checkpoint_fails_with_the_reason(tmp_path):
    with pytest.raises(WeightsError, match='regression.checkpoint is not set'):
        create('regression', {}, device='cpu')
    with pytest.raises(WeightsError, match='does not exist'):
        create('regression', {'checkpoint': str(tmp_path / 'nope.ckpt')}, device='cpu')
    bad = tmp_path / 'garbage.ckpt'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(WeightsError, match='cannot read'):
        create('regression', {'checkpoint': str(bad)}, device='cpu')
    with pytest.raises(ConfigError, match='unknown parameter'):
        create('regression', {'checkpoint': str(bad), 'weights': 'x'}, device='cpu')


def test_mismatched_checkpoint_names_the_keys(trained, tmp_path):
    ckpt, _module, _seq = trained
    blob = torch.load(ckpt, map_location='cpu', weights_only=False)
    blob['state_dict'].pop('model.head.rot.2.bias')
    blob['state_dict']['model.head.dir.2.weight'] = torch.zeros(5, 5)
    broken = tmp_path / 'broken.ckpt'
    torch.save(blob, broken)
    with pytest.raises(WeightsError, match=r"missing keys \['head.rot.2.bias'\].*shape mismatches"):
        create('regression', {'checkpoint': str(broken)}, device='cpu')
    del blob['hyper_parameters']
    torch.save(blob, broken)
    with pytest.raises(WeightsError, match='hyper_parameters'):
        create('regression', {'checkpoint': str(broken)}, device='cpu')


def test_loftr_weights_missing_mismatched_or_different(trained, tmp_path):
    ckpt, module, _seq = trained
    with pytest.raises(WeightsError, match='does not exist'):
        LoFTRCoarse(tmp_path / 'loftr_missing.ckpt')
    state = {'matcher.' + k: v for k, v in module.model.loftr.state_dict().items()}
    good = tmp_path / 'loftr.ckpt'
    torch.save({'state_dict': state}, good)
    LoFTRCoarse(good)                                       # 'matcher.' prefix accepted
    create('regression', {'checkpoint': str(ckpt), 'loftr_weights': str(good)}, device='cpu')
    wrong = dict(state)
    wrong['matcher.loftr_coarse.layers.0.q_proj.weight'] = torch.zeros(3, 3)
    del wrong['matcher.backbone.conv1.weight']
    torch.save({'state_dict': wrong}, tmp_path / 'wrong.ckpt')
    with pytest.raises(WeightsError, match=r"missing keys \['backbone.conv1.weight'\].*shape mismatches"):
        LoFTRCoarse(tmp_path / 'wrong.ckpt')
    other = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({'state_dict': other}, tmp_path / 'other.ckpt')
    with pytest.raises(WeightsError, match='differ from the LoFTR weights'):
        create('regression', {'checkpoint': str(ckpt), 'loftr_weights': str(tmp_path / 'other.ckpt')}, device='cpu')

"""MicKey model (small ViT-S/14-sized configuration, same code as ViT-L) and the official-weights loader."""
from __future__ import annotations

import copy
import sys
import threading
import types

import numpy as np
import pytest
import torch

from relpose_ros.errors import FrameError, WeightsError
from relpose_ros.models.mickey import MickeyConfig, MickeyModel, export_official, load_mickey
from relpose_ros.models.mickey.precision import strict_fp32, tf32_disabled, tf32_settings

SMALL = MickeyConfig('vits14')


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def textured_image(H: int, W: int, dx: int = 0, dy: int = 0) -> np.ndarray:
    """The golden kit's integer test pattern (HxWx3 uint8), shifted by (dx, dy)."""
    y, x, c = np.meshgrid(np.arange(H) + dy, np.arange(W) + dx, np.arange(3), indexing='ij')
    a = ((x // 18 + y // 15 + c) % 3) * 60
    b = (3 * x + 5 * y + 40 * c) % 97
    n = (((1103 * x + 2029 * y + 3203 * c + (x * y) % 251) * 2654435761) >> 16) % 38
    return (a + b + n).astype(np.uint8)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope='module')
def small_model() -> MickeyModel:
    torch.manual_seed(0)
    return MickeyModel(SMALL).eval()


@pytest.mark.parametrize('H,W', [(126, 168), (168, 126)])
def test_small_model_outputs(small_model, H, W):
    with torch.inference_mode():
        f = small_model.extract(to_tensor(textured_image(H, W)))
    h, w = H // 14, W // 14
    N = h * w
    assert f.grid == (h, w)
    assert f.kps.shape == (1, 2, N) and f.depth.shape == (1, 1, N) and f.scores.shape == (1, 1, N)
    assert f.desc.shape == (1, 128, N)
    assert torch.allclose(f.desc.norm(dim=1), torch.ones(1, N), atol=1e-5)
    scores = f.scores.view(h, w)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(scores[:3].abs().sum() + scores[-3:].abs().sum() + scores[:, :3].abs().sum()
                 + scores[:, -3:].abs().sum()) == 0.0
    assert float(scores[3:-3, 3:-3].min()) > 0
    # keypoints lie inside their own patch: u in [14 j, 14 (j+1)), v in [14 i, 14 (i+1))
    u, v = f.kps[0, 0].view(h, w), f.kps[0, 1].view(h, w)
    j = torch.arange(w).view(1, w) * 14.0
    i = torch.arange(h).view(h, 1) * 14.0
    assert bool(((u >= j) & (u <= j + 14)).all()) and bool(((v >= i) & (v <= i + 14)).all())
    for t in (f.kps, f.depth, f.scores, f.desc):
        assert bool(torch.isfinite(t).all())


def test_top_left_crop_ignores_the_remainder(small_model):
    img = to_tensor(textured_image(110, 125))
    other = img.clone()
    other[..., 98:, :] = 0.5      # rows and columns past the 14-multiple are dropped
    other[..., :, 112:] = 0.1
    with torch.inference_mode():
        a, b = small_model.extract(img), small_model.extract(other)
    assert torch.equal(a.kps, b.kps) and torch.equal(a.desc, b.desc)


def test_too_small_image_names_minimum_size(small_model):
    with pytest.raises(FrameError, match='98x98'):
        small_model.extract(torch.rand(1, 3, 97, 300))


def test_matcher_rows_and_columns(small_model):
    with torch.inference_mode():
        f0 = small_model.extract(to_tensor(textured_image(112, 126)))
        f1 = small_model.extract(to_tensor(textured_image(112, 126, dx=7, dy=3)))
        final, match = small_model.matcher(f0.desc, f1.desc, f0.scores, f1.scores)
    assert final.shape == (1, 72, 72)
    assert bool((match >= 0).all()) and float(match.sum(2).max()) <= 1.0 + 1e-5
    assert torch.allclose(final, match * (f0.scores.transpose(1, 2) @ f1.scores))


def test_small_config_trains(small_model):
    """Gradients reach every head and the dustbin, not the frozen backbone; one step lowers the loss."""
    torch.manual_seed(1)
    model = MickeyModel(SMALL)
    model.train()
    assert not model.extractor.backbone.training         # frozen backbone stays in eval mode
    img0, img1 = to_tensor(textured_image(98, 112)), to_tensor(textured_image(98, 112, dx=5, dy=2))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def loss_fn() -> torch.Tensor:
        f0, f1, final = model(img0, img1)
        return ((f0.depth - 2.0).pow(2).mean() + (f1.depth - 2.0).pow(2).mean() + 1e-3 * f0.kps.mean()
                - torch.log(final.sum() + 1e-12))

    loss = loss_fn()
    opt.zero_grad()
    loss.backward()
    for name in ('det_head', 'det_offset', 'depth_head', 'dsc_head'):
        head = getattr(model.extractor, name)
        g = head.resblock1.conv1.weight.grad
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0, name
    assert model.matcher.matching_mat.dustbin_score.grad is not None
    assert all(p.grad is None for p in model.extractor.backbone.parameters())
    assert model.extractor.det_head.eps.grad is None
    opt.step()
    with torch.no_grad():
        after = loss_fn().item()
    assert np.isfinite(after) and after < loss.item()
    assert int(model.extractor.det_head.resblock1.bn1.num_batches_tracked) > 0


# ----------------------------------------------------------------------------- precision (fp16 backbone, fp32 heads)


def test_strict_fp32_scope_disables_tf32_and_restores_settings():
    """The scope switches TF32 off for matmuls and cuDNN convolutions, nests, and restores what was set before
    (also a user's choice to allow TF32); the flags can be read and set without a GPU."""
    original = tf32_settings()
    try:
        torch.backends.cudnn.allow_tf32 = True            # PyTorch's default for convolutions: TF32 allowed
        torch.backends.cuda.matmul.allow_tf32 = True       # a user who allowed TF32 for matmuls
        before = tf32_settings()
        assert not tf32_disabled()
        with strict_fp32():
            assert tf32_disabled()
            with strict_fp32():
                assert tf32_disabled()
            assert tf32_disabled()                         # the inner exit does not restore early
        assert tf32_settings() == before and not tf32_disabled()
        with strict_fp32(enabled=False):
            assert tf32_settings() == before
        with pytest.raises(RuntimeError):
            with strict_fp32():
                raise RuntimeError('boom')
        assert tf32_settings() == before                   # restored on errors too

        # overlapping scopes in two threads: the last one out restores
        inside, release = threading.Event(), threading.Event()

        def worker() -> None:
            with strict_fp32():
                inside.set()
                release.wait(10)

        t = threading.Thread(target=worker)
        with strict_fp32():
            t.start()
            assert inside.wait(10)
        assert tf32_disabled()                             # the worker's scope is still open
        release.set()
        t.join(10)
        assert tf32_settings() == before
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True
        if original[0] == 'new':
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = original[1:]
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = original[1:]
    assert tf32_settings() == original


def precision_probe(model: MickeyModel) -> tuple[dict[str, list], list]:
    """Forward hooks on backbone, head and matcher modules recording (output dtype, CUDA autocast on, TF32 off)."""
    ex, vit = model.extractor, model.extractor.backbone
    modules = {'backbone.patch_embed': vit.patch_embed.proj, 'backbone.block0.qkv': vit.blocks[0].attn.qkv,
               'backbone.last.fc2': vit.blocks[-1].mlp.fc2}
    for name in ('det_head', 'det_offset', 'depth_head', 'dsc_head'):
        head = getattr(ex, name)
        modules[f'{name}.resblock1.conv1'] = head.resblock1.conv1
        modules[f'{name}.att.q_proj'] = head.att_layer.layers[0].q_proj
        modules[f'{name}.resblock4.conv2'] = head.resblock4.conv2
    modules['matcher'] = model.matcher
    records: dict[str, list] = {name: [] for name in modules}

    def hook(name: str):
        def record(module, args, out) -> None:
            out = out[0] if isinstance(out, tuple) else out
            records[name].append((out.dtype, torch.is_autocast_enabled('cuda'), tf32_disabled()))
        return record

    return records, [m.register_forward_hook(hook(name)) for name, m in modules.items()]


def check_precision(records: dict[str, list], fp16: bool) -> None:
    """Backbone in float16 autocast iff ``fp16``; heads and matcher float32 without autocast; TF32 off everywhere."""
    for name, entries in records.items():
        assert entries, f'{name} never ran'
        for dtype, autocast, no_tf32 in entries:
            if name.startswith('backbone'):
                assert dtype == (torch.float16 if fp16 else torch.float32) and autocast == fp16, (name, dtype)
            else:
                assert dtype == torch.float32 and not autocast, (name, dtype, autocast)
            assert no_tf32, f'{name} ran with TF32 allowed'


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (b the float32 CPU reference)."""
    return float((a.detach().cpu().double() - b.double()).abs().max() / b.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('fp16,tol', [(True, 1e-2), (False, 1e-4)])
def test_cuda_fp16_backbone_fp32_heads_close_to_cpu(fp16, tol):
    """Small backbone on CUDA: backbone float16 (autocast) or float32, heads and matcher float32 without TF32;
    outputs close to the same model's float32 CPU outputs (loose with float16, the golden tolerance without)."""
    from relpose_ros.backends.mickey import MickeyEstimator
    from relpose_ros.types import Frame

    torch.manual_seed(0)
    cpu = MickeyModel(SMALL).eval()
    with torch.no_grad():              # a backbone that matters (random init: LayerScale 1e-5, zero pos_embed)
        for blk in cpu.extractor.backbone.blocks:
            blk.ls1.gamma.fill_(0.1)
            blk.ls2.gamma.fill_(0.1)
        cpu.extractor.backbone.pos_embed.normal_(0.0, 0.5)
    gpu = copy.deepcopy(cpu).to('cuda')
    gpu.extractor.backbone_fp16 = fp16
    images = [to_tensor(textured_image(126, 168)), to_tensor(textured_image(126, 168, dx=7, dy=3))]
    settings = tf32_settings()
    records, hooks = precision_probe(gpu)
    try:
        with torch.inference_mode():
            g0, g1 = (gpu.extract(img.cuda()) for img in images)
            final_gpu = gpu.match(g0, g1)
    finally:
        for h in hooks:
            h.remove()
    assert tf32_settings() == settings                     # the scope is left as it was found
    check_precision(records, fp16)
    with torch.inference_mode():
        c0, c1 = (cpu.extract(img) for img in images)
        final_cpu = cpu.match(c0, c1)
    for name in ('kps', 'depth', 'scores', 'desc'):
        for g, c in ((g0, c0), (g1, c1)):
            assert getattr(g, name).dtype == torch.float32
            err = rel_err(getattr(g, name), getattr(c, name))
            assert err <= tol, f'{name}: relative error {err:.3g} > {tol} (fp16 {fp16})'
    err = rel_err(final_gpu, final_cpu)
    assert err <= tol, f'final_scores: relative error {err:.3g} > {tol} (fp16 {fp16})'

    # the backend's CUDA path: 'auto' turns the float16 backbone on, 'false' keeps float32
    est = MickeyEstimator({'image_size': [], 'backbone_fp16': 'auto' if fp16 else 'false', 'num_sample_sets': 4,
                           'hypotheses_per_set': 50, 'min_inliers': 0}, device='cuda', model=gpu)
    assert est.model.extractor.backbone_fp16 is fp16
    K = np.array([[200.0, 0, 84], [0, 200.0, 63], [0, 0, 1]])
    records, hooks = precision_probe(gpu)
    try:
        ref = est.prepare_reference(Frame(textured_image(126, 168), K))
        res = est.estimate(ref, Frame(textured_image(126, 168, dx=7, dy=3), K))
    finally:
        for h in hooks:
            h.remove()
    check_precision(records, fp16)
    assert tf32_settings() == settings
    assert np.all(np.isfinite(res.R)) and np.all(np.isfinite(res.t)) and (res.ok or res.reason)


# ----------------------------------------------------------------------------- weights files


@pytest.fixture(scope='module')
def small_files(small_model, tmp_path_factory):
    """The small model exported in the official layout: Lightning-style checkpoint + DINOv2-style file."""
    d = tmp_path_factory.mktemp('mickey_small')
    heads, backbone = export_official(small_model)
    # Lightning metadata referencing a class that is not installed at load time (like yacs' CfgNode)
    mod = types.ModuleType('fake_yacs_config')

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = 'fake_yacs_config', 'CfgNode'
    mod.CfgNode = CfgNode
    sys.modules['fake_yacs_config'] = mod
    try:
        torch.save({'state_dict': heads, 'hyper_parameters': {'cfg': CfgNode(MODEL='MicKey')}, 'epoch': 3},
                   d / 'mickey.ckpt')
    finally:
        del sys.modules['fake_yacs_config']
    torch.save(backbone, d / 'dinov2.pth')
    return d, heads, backbone


def test_load_official_layout_reproduces_model(small_model, small_files):
    d, _, _ = small_files
    loaded = load_mickey(d / 'mickey.ckpt', d / 'dinov2.pth', SMALL)
    img = to_tensor(textured_image(98, 112))
    with torch.inference_mode():
        a, b = small_model.extract(img), loaded.extract(img)
    assert torch.equal(a.kps, b.kps) and torch.equal(a.desc, b.desc) and torch.equal(a.depth, b.depth)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.extractor.backbone.parameters())


def test_backbone_inside_lightning_checkpoint(small_model, small_files, tmp_path):
    _, heads, backbone = small_files
    full = dict(heads)
    full.update({'compute_matches.extractor.dinov2_vitl14.' + k: v for k, v in backbone.items()})
    torch.save({'state_dict': full}, tmp_path / 'full.ckpt')
    loaded = load_mickey(tmp_path / 'full.ckpt', None, SMALL)
    assert torch.equal(loaded.extractor.backbone.pos_embed, small_model.extractor.backbone.pos_embed)


def test_missing_file(small_files, tmp_path):
    d, _, _ = small_files
    with pytest.raises(WeightsError, match=r'mickey\.checkpoint.*not found.*nope\.ckpt'):
        load_mickey(tmp_path / 'nope.ckpt', d / 'dinov2.pth', SMALL)
    with pytest.raises(WeightsError, match=r'mickey\.dinov2_weights.*not found'):
        load_mickey(d / 'mickey.ckpt', tmp_path / 'nope.pth', SMALL)
    with pytest.raises(WeightsError, match=r'dinov2_weights is not set'):
        load_mickey(d / 'mickey.ckpt', None, SMALL)


def test_truncated_file(small_files, tmp_path):
    d, _, _ = small_files
    data = (d / 'dinov2.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r'cannot read weights file .*cut\.pth'):
        load_mickey(d / 'mickey.ckpt', tmp_path / 'cut.pth', SMALL)
    (tmp_path / 'text.pth').write_text('not weights')
    with pytest.raises(WeightsError, match=r'text\.pth'):
        load_mickey(tmp_path / 'text.pth', d / 'dinov2.pth', SMALL)


def test_mismatched_keys_are_listed(small_files, tmp_path):
    d, heads, backbone = small_files
    bad = dict(backbone)
    del bad['blocks.0.attn.qkv.weight']
    bad['blocks.0.attn.extra'] = torch.zeros(1)
    bad['norm.weight'] = torch.zeros(7)
    torch.save(bad, tmp_path / 'bad.pth')
    with pytest.raises(WeightsError) as exc:
        load_mickey(d / 'mickey.ckpt', tmp_path / 'bad.pth', SMALL)
    msg = str(exc.value)
    assert 'bad.pth' in msg and 'mickey.dinov2_weights' in msg
    assert '1 missing: blocks.0.attn.qkv.weight' in msg
    assert '1 unexpected: blocks.0.attn.extra' in msg
    assert 'norm.weight (7,) != (384,)' in msg

    # small-backbone files into the ViT-L model: every backbone-fed head weight is mis-shaped
    with pytest.raises(WeightsError, match=r'(?s)mickey\.checkpoint: .*mickey\.ckpt.*mis-shaped: '
                                           r'compute_matches\.extractor\.'):
        load_mickey(d / 'mickey.ckpt', d / 'dinov2.pth', MickeyConfig('vitl14'))
    heads_bad = {k: v for k, v in heads.items() if 'dustbin' not in k}
    torch.save({'state_dict': heads_bad}, tmp_path / 'nodustbin.ckpt')
    with pytest.raises(WeightsError, match=r'missing: compute_matches\.matcher\.matching_mat\.dustbin_score'):
        load_mickey(tmp_path / 'nodustbin.ckpt', d / 'dinov2.pth', SMALL)

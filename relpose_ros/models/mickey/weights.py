"""Loading the official MicKey files from local paths, with a strict key and shape check.

* ``checkpoint``: the MicKey Lightning checkpoint (``{'state_dict': {...}}``) or a plain state dict, keys like
  ``compute_matches.extractor.det_head.score.weight`` (``manifest_heads.tsv`` of the golden kit). It may also hold
  the backbone as ``compute_matches.extractor.dinov2_vitl14.*``.
* ``dinov2_weights``: the DINOv2 checkpoint in its original key format (``blocks.0.attn.qkv.weight``, ...).

Any problem (missing, unreadable, truncated, wrong keys or shapes) is a :class:`WeightsError` naming the file and
listing the first missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

import io
import logging
import pickle
import types
from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import WeightsError
from .model import MickeyConfig, MickeyModel

LOG = logging.getLogger(__name__)

LIGHTNING_PREFIX = 'compute_matches.'
OFFICIAL_BACKBONE_PREFIX = 'compute_matches.extractor.dinov2_vitl14.'
BACKBONE_PREFIX = 'extractor.backbone.'
SHOW = 5   # keys listed per category in error messages


class _Placeholder(dict):
    """Stands in for classes a checkpoint's metadata references but that are not installed (yacs, Lightning)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def __setstate__(self, state) -> None:
        pass


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Placeholder


_lenient_pickle = types.ModuleType('relpose_lenient_pickle')
_lenient_pickle.Unpickler = _LenientUnpickler
_lenient_pickle.load = lambda f, **kw: _LenientUnpickler(f, **kw).load()
_lenient_pickle.__dict__.update({k: getattr(pickle, k) for k in ('UnpicklingError', 'HIGHEST_PROTOCOL')})


def read_state_dict(path: str | Path, what: str, allow_pickle_fallback: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file to a flat ``{key: tensor}`` dict on the CPU (``state_dict`` entry of a Lightning file).

    ``what`` names the parameter in error messages. Tries ``weights_only=True`` (memory-mapped when possible);
    with ``allow_pickle_fallback`` a Lightning file whose metadata needs other classes is read with a lenient
    unpickler (unknown classes become placeholders) - only load files you trust.
    """
    p = Path(path).expanduser()
    if not str(path):
        raise WeightsError(f'{what} is not set: give the path of the file')
    if not p.is_file():
        raise WeightsError(f'{what}: weights file not found: {p}')
    try:
        obj = _load(p, allow_pickle_fallback)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read is a bad file
        raise WeightsError(f'{what}: cannot read weights file {p} (corrupt, truncated or not a torch file): '
                           f'{type(exc).__name__}: {exc}') from exc
    if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
        obj = obj['state_dict']
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f'{what}: {p} does not hold a state dict of tensors (got {type(obj).__name__})')
    return dict(obj)


def _load(p: Path, allow_pickle_fallback: bool):
    try:
        return torch.load(p, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError as exc:
        if 'mmap' not in str(exc) and 'zip' not in str(exc).lower():
            raise
        # legacy (non-zip) format: cannot be memory-mapped
        return torch.load(p, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle_fallback:
            raise
        LOG.warning('%s holds non-tensor metadata; reading it with a lenient unpickler', p)
        with open(p, 'rb') as f:
            data = io.BytesIO(f.read())
        return torch.load(data, map_location='cpu', weights_only=False, pickle_module=_lenient_pickle)


def _mismatch_report(path: Path, what: str, expected: Mapping[str, torch.Size], got: Mapping[str, torch.Tensor],
                     rename) -> str | None:
    """Compare ``got`` (file keys) against ``expected`` (model keys); None when they match exactly."""
    renamed = {rename(k): k for k in got}
    missing = [k for k in expected if k not in renamed]
    unexpected = [renamed[k] for k in renamed if k not in expected]
    misshaped = [f'{renamed[k]} {tuple(got[renamed[k]].shape)} != {tuple(expected[k])}'
                 for k in renamed if k in expected and tuple(got[renamed[k]].shape) != tuple(expected[k])]
    if not (missing or unexpected or misshaped):
        return None

    def part(label: str, keys: list[str], mapping=lambda k: k) -> str:
        if not keys:
            return ''
        more = f' (+{len(keys) - SHOW} more)' if len(keys) > SHOW else ''
        return f'\n  {len(keys)} {label}: ' + ', '.join(mapping(k) for k in keys[:SHOW]) + more

    return (f'{what}: {path} does not match the MicKey model ({len(got)} tensors in the file, '
            f'{len(expected)} expected)'
            + part('missing', missing, _official_name)
            + part('unexpected', unexpected) + part('mis-shaped', misshaped))


def _official_name(model_key: str) -> str:
    if model_key.startswith(BACKBONE_PREFIX):
        return model_key[len(BACKBONE_PREFIX):]
    return LIGHTNING_PREFIX + model_key


def _heads_key(k: str) -> str:
    if k.startswith(OFFICIAL_BACKBONE_PREFIX):
        return BACKBONE_PREFIX + k[len(OFFICIAL_BACKBONE_PREFIX):]
    return k[len(LIGHTNING_PREFIX):] if k.startswith(LIGHTNING_PREFIX) else '?' + k


def _backbone_key(k: str) -> str:
    return BACKBONE_PREFIX + k


def model_state(checkpoint: str | Path, dinov2_weights: str | Path | None, config: MickeyConfig,
                expected: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Read and check both files; returns the model's state dict (float tensors as float32)."""
    heads_expected = {k: s for k, s in expected.items() if not k.startswith(BACKBONE_PREFIX)}
    backbone_expected = {k: s for k, s in expected.items() if k.startswith(BACKBONE_PREFIX)}
    ckpt_path = Path(checkpoint).expanduser()
    ckpt = read_state_dict(checkpoint, 'mickey.checkpoint', allow_pickle_fallback=True)
    has_backbone = any(k.startswith(OFFICIAL_BACKBONE_PREFIX) for k in ckpt)
    heads_part = {k: v for k, v in ckpt.items() if not k.startswith(OFFICIAL_BACKBONE_PREFIX)}
    err = _mismatch_report(ckpt_path, 'mickey.checkpoint', heads_expected, heads_part, _heads_key)
    if err:
        raise WeightsError(err)
    state = {_heads_key(k): v for k, v in heads_part.items()}

    if dinov2_weights:
        dino_path = Path(dinov2_weights).expanduser()
        dino = read_state_dict(dinov2_weights, 'mickey.dinov2_weights')
        err = _mismatch_report(dino_path, 'mickey.dinov2_weights', backbone_expected, dino, _backbone_key)
        if err:
            raise WeightsError(err + f'\n  (expected a DINOv2 {config.backbone} checkpoint in its original key format)')
        state.update({_backbone_key(k): v for k, v in dino.items()})
    elif has_backbone:
        part = {k: v for k, v in ckpt.items() if k.startswith(OFFICIAL_BACKBONE_PREFIX)}
        err = _mismatch_report(ckpt_path, 'mickey.checkpoint (backbone part)', backbone_expected, part, _heads_key)
        if err:
            raise WeightsError(err)
        state.update({_heads_key(k): v for k, v in part.items()})
    else:
        raise WeightsError(f'mickey.dinov2_weights is not set and {ckpt_path} holds no backbone weights: give the '
                           f'path of the DINOv2 {config.backbone} checkpoint (e.g. dinov2_vitl14_pretrain.pth)')
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def load_mickey(checkpoint: str | Path, dinov2_weights: str | Path | None = None,
                config: MickeyConfig = MickeyConfig(), device: str | torch.device = 'cpu') -> MickeyModel:
    """Build :class:`MickeyModel` from the official files (strict check), in eval mode on ``device``.

    The model is built on the meta device and takes the loaded tensors directly (no random initialisation,
    no second copy of the weights).
    """
    with torch.device('meta'):
        model = MickeyModel(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = model_state(checkpoint, dinov2_weights, config, expected)
    model.load_state_dict(state, strict=True, assign=True)
    model.extractor.backbone.requires_grad_(not config.freeze_backbone)
    for name in ('eps', 'offset_par1', 'offset_par2', 'ones_kernel'):
        getattr(model.extractor.det_head, name).requires_grad_(False)
    return model.to(device).eval()


def export_official(model: MickeyModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's weights in the official layout: (Lightning-style heads dict, DINOv2-style backbone dict)."""
    heads, backbone = {}, {}
    for k, v in model.state_dict().items():
        if k.startswith(BACKBONE_PREFIX):
            backbone[k[len(BACKBONE_PREFIX):]] = v
        else:
            heads[LIGHTNING_PREFIX + k] = v
    return heads, backbone

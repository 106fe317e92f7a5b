"""Reading the checkpoint that ``relpose train`` writes (a Lightning ``.ckpt``) into a RegressionModel.

The file holds ``hyper_parameters['config']['model']`` (architecture and image size) and ``state_dict`` with the
``model.`` prefix (head and the LoFTR coarse stage it was trained with). No conversion step exists or is needed.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import WeightsError
from .model import RegressionModel


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(model config, model state dict without prefix) of a training checkpoint; WeightsError with the reason."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f'regression checkpoint {path} does not exist (regression.checkpoint must name a file '
                           f'written by `relpose train`, e.g. runs/regression/checkpoints/best.ckpt)')
    try:
        blob = torch.load(path, map_location='cpu', weights_only=False)  # local Lightning file
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f'cannot read regression checkpoint {path}: {exc}') from exc
    if not isinstance(blob, Mapping) or 'state_dict' not in blob:
        raise WeightsError(f'regression checkpoint {path} has no "state_dict" (not written by `relpose train`?)')
    try:
        model_cfg = dict(blob['hyper_parameters']['config']['model'])
    except (KeyError, TypeError) as exc:
        raise WeightsError(f'regression checkpoint {path} lacks hyper_parameters.config.model '
                           f'(not written by `relpose train`?)') from exc
    state = {k[len('model.'):]: v for k, v in blob['state_dict'].items() if k.startswith('model.')}
    if not state:
        raise WeightsError(f'regression checkpoint {path}: no "model." weights in its state_dict')
    return model_cfg, state


def load_regression_model(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RegressionModel:
    """Build the model described by the checkpoint and load its weights (strict: any mismatch is an error).

    ``overrides`` may change inference-only settings (image_size, temperature, confidence). The LoFTR weights
    stored in the checkpoint are the ones the head was trained with; they are never re-read from elsewhere.
    """
    cfg, state = read_checkpoint(path)
    cfg['loftr_weights'] = None  # weights come from the checkpoint itself
    cfg.update(dict(overrides or {}))
    model = RegressionModel(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
           for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise WeightsError(f'regression checkpoint {path} does not match the model: {len(missing)} missing keys '
                           f'{missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, {len(bad)} shape '
                           f'mismatches {bad[:3]}')
    model.load_state_dict(state)
    return model.eval()


def save_model_checkpoint(model: RegressionModel, path: str | Path) -> Path:
    """Write ``model`` in the layout ``relpose train`` writes (for benchmarks and tools; training writes its own)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config)
    torch.save({'state_dict': {'model.' + k: v for k, v in model.state_dict().items()},
                'hyper_parameters': {'config': {'model': cfg}}}, path)
    return path

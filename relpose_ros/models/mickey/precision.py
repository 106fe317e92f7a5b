"""Strict float32 on CUDA: TF32 off for matmuls and cuDNN convolutions, scoped to MicKey's forward passes.

On Ampere and later GPUs PyTorch may run float32 matmuls and (by default) cuDNN convolutions in TF32 (10-bit
mantissa), which puts the "float32" heads about 1e-3 away from true float32. :func:`strict_fp32` switches TF32 off
for the duration of a block and restores the previous settings afterwards. PyTorch's flags are process-wide (not
per thread), so while a block runs, other threads' CUDA work is also strict float32; nested and concurrent blocks
are reference-counted (the first one in saves the settings, the last one out restores them). float16 / autocast
work is not affected. On a CPU-only run the flags do nothing (they only steer cuBLAS and cuDNN).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LOCK = threading.Lock()
_depth = 0
_saved: tuple | None = None


def _new_api() -> bool:
    """PyTorch >= 2.9 has per-operator ``fp32_precision`` settings; mixing them with ``allow_tf32`` can raise."""
    try:
        return (isinstance(torch.backends.cuda.matmul.fp32_precision, str)
                and isinstance(torch.backends.cudnn.conv.fp32_precision, str))
    except (AttributeError, RuntimeError):
        return False


def tf32_settings() -> tuple:
    """The current TF32 settings: ('new', matmul, conv) fp32_precision strings or ('legacy', matmul, conv) bools."""
    if _new_api():
        return 'new', torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return 'legacy', torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set(state: tuple) -> None:
    api, matmul, conv = state
    if api == 'new':
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.conv.fp32_precision = conv
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


def _strict_state() -> tuple:
    return ('new', 'ieee', 'ieee') if _new_api() else ('legacy', False, False)


def tf32_disabled() -> bool:
    """True when float32 CUDA matmuls and cuDNN convolutions currently run in full float32 (no TF32)."""
    api, matmul, conv = tf32_settings()
    if api == 'new':
        return matmul == 'ieee' and conv == 'ieee'
    return not matmul and not conv


@contextmanager
def strict_fp32(enabled: bool = True) -> Iterator[None]:
    """Within the block, float32 CUDA matmuls and cuDNN convolutions do not use TF32; restored on exit.

    ``enabled=False`` makes it a no-op (e.g. for CPU tensors or when TF32 is wanted).
    """
    global _depth, _saved
    if not enabled:
        yield
        return
    with _LOCK:
        if _depth == 0:
            _saved = tf32_settings()
            _set(_strict_state())
        _depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                _set(_saved)
                _saved = None

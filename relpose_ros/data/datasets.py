"""``open_dataset('FORMAT:PATH', **options) -> Sequence``: one entry point for every reader.

Formats:

- ``7scenes:DIR``   7-Scenes layout (options: use_depth, colour_focal: the colour camera's focal length; the
  file K (585) is the depth camera's, the Kinect v1 colour camera has ~525: with this option frames get the colour
  K and the depth registered into it, as ``relpose bench rgbd`` does)
- ``tum:DIR``       TUM RGB-D layout (options: use_depth, camera ('fr1'|'fr2'|'fr3'|'intrinsics.txt' default),
  max_dt (association tolerance, s))
- ``mapfree:DIR``   one Map-free scene folder ``sXXXXX`` (options: none)
- ``bag:FILE``      ROS 2 bag (.mcap or .db3 file, or the bag folder) (options: image_topic, info_topic,
  depth_topic, gt_topic, gt_frame, camera_frame, ... see :class:`~relpose_ros.data.bag_reader.BagSequence`)
- ``synthetic:N``   a rendered synthetic scene with N frames (default 60) (options: width, height, seed, fps,
  use_depth); the part after the colon may be empty.

Options given as strings (from the command line ``--dataset-option key=value``) are converted with
:func:`parse_option_value`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError
from .sequence import Sequence

FORMATS: dict[str, str] = {
    '7scenes': 'relpose_ros.data.seven_scenes:SevenScenesSequence',
    'tum': 'relpose_ros.data.tum:TUMSequence',
    'mapfree': 'relpose_ros.data.mapfree:MapFreeSequence',
    'bag': 'relpose_ros.data.bag_reader:BagSequence',
    'synthetic': 'relpose_ros.data.synthetic:SyntheticSequence',
}


def parse_spec(spec: str) -> tuple[str, str]:
    """``'FORMAT:PATH'`` -> ``(format, path)``; the format is checked against :data:`FORMATS`."""
    if ':' not in spec:
        raise ConfigError(f"dataset '{spec}' must be given as FORMAT:PATH with FORMAT one of "
                          f"{', '.join(FORMATS)} (e.g. 7scenes:../shared/data/7scenes-1000)")
    fmt, path = spec.split(':', 1)
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format '{fmt}' in '{spec}'; known: {', '.join(FORMATS)}")
    return fmt, path


def parse_option_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, '[1, 2]' -> list (YAML flow syntax),
    anything else stays a string."""
    low = text.strip().lower()
    if low[:1] in ('[', '{'):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f'cannot parse option value {text!r}: {exc}') from None
    if low in ('true', 'yes', 'on'):
        return True
    if low in ('false', 'no', 'off'):
        return False
    if low in ('none', 'null'):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``['key=value', ...]`` -> dict with converted values."""
    out: dict[str, Any] = {}
    for item in items or []:
        if '=' not in item:
            raise ConfigError(f"dataset option '{item}' must be key=value")
        k, v = item.split('=', 1)
        out[k.strip()] = parse_option_value(v)
    return out


def open_dataset(spec: str, **options: Any) -> Sequence:
    """Open a posed sequence from ``'FORMAT:PATH'`` with reader ``options``."""
    fmt, path = parse_spec(spec)
    module, cls_name = FORMATS[fmt].split(':')
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        if fmt == 'synthetic':
            if path.strip():
                try:
                    options.setdefault('num_frames', int(path))
                except ValueError:
                    raise ConfigError(f"synthetic dataset takes a frame count (synthetic:60), got '{path}'") from None
            return cls(**options)
        if not path:
            raise ConfigError(f"dataset '{spec}' has no path after '{fmt}:'")
        if fmt != 'bag' and not Path(path).is_dir():
            raise DatasetError(f'{fmt} dataset folder {path} does not exist or is not a folder')
        colour_focal = options.pop('colour_focal', None) if fmt == '7scenes' else None
        sequence = cls(path, **options)
        if colour_focal:
            sequence = _with_colour_focal(sequence, float(colour_focal))
        return sequence
    except TypeError as exc:
        if 'argument' in str(exc):
            raise ConfigError(f'bad option for the {fmt} reader: {exc}') from None
        raise


def _with_colour_focal(sequence, focal: float):
    """7-Scenes frames with the colour camera's focal length and depth registered into it ."""
    import numpy as np

    from .registered import RegisteredSequence

    K = np.array(sequence.K, dtype=np.float64)
    K[0, 0] = K[1, 1] = focal
    return RegisteredSequence(sequence, K)

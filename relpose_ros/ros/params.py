"""The node's parameters: one table of specs (default, description, range / choices, read-only),
and the flattening of a backend's nested ``default_config`` into ``<backend>.<key>`` parameters.

Pure Python: the node turns these specs into rclpy ParameterDescriptors. The defaults here must
equal ``config/relocalize.yaml`` (a test checks it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive, for int / float
    choices: tuple[str, ...] | None = None
    read_only: bool = False  # fixed at start-up (changing it needs a restart)


NODE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec('backend', 'rgbd', 'estimator backend (see relpose_ros.backends.available())', read_only=True),
    ParamSpec('device', 'auto', 'torch device for the backend', choices=('auto', 'cpu', 'cuda'), read_only=True),
    ParamSpec('min_confidence', 0.2, 'poses with a lower confidence are not published on relpose / relpose/pose '
              '(their confidence still is)', range=(0.0, 1.0)),
    ParamSpec('image_transport', 'raw', "colour images: 'raw' (sensor_msgs/Image on image) or 'compressed' "
              '(sensor_msgs/CompressedImage on image/compressed)', choices=('raw', 'compressed'), read_only=True),
    ParamSpec('depth_transport', 'raw', "depth images: 'raw' (Image on depth) or 'compressedDepth' "
              '(CompressedImage on depth/compressedDepth)', choices=('raw', 'compressedDepth'), read_only=True),
    ParamSpec('use_depth', True, 'subscribe to depth (live and reference) and pass it to the backend', read_only=True),
    ParamSpec('depth_scale', 0.001, 'metres per unit of 16-bit depth images (16UC1 / mono16)', range=(1e-6, 1.0)),
    ParamSpec('sync_slop', 0.02, 'max stamp difference (s) between image, camera_info and depth of one frame',
              range=(0.0, 1.0)),
    ParamSpec('sync_queue_size', 10, 'messages kept per input topic while waiting for partners', range=(1, 100),
              read_only=True),
    ParamSpec('max_image_size', 0, 'downscale so the longer image side is at most this many pixels before the '
              'backend (K rescaled); 0 = full resolution', range=(0, 8192), read_only=True),
    ParamSpec('reference_frame_id', '', "frame_id of the reference camera on the outputs; '' = the reference "
              "image's frame_id"),
    ParamSpec('publish_tf', False, 'also broadcast the relpose transform on /tf (needs tf2_ros)', read_only=True),
    ParamSpec('diagnostics_period', 1.0, 'seconds between /diagnostics messages', range=(0.1, 60.0),
              read_only=True),
    ParamSpec('covariance.position_std_min', 0.05, 'position std (m) at confidence 1', range=(1e-6, 1000.0)),
    ParamSpec('covariance.position_std_max', 2.0, 'position std (m) at confidence 0', range=(1e-6, 1000.0)),
    ParamSpec('covariance.rotation_std_min', 0.02, 'rotation std (rad) at confidence 1', range=(1e-6, 10.0)),
    ParamSpec('covariance.rotation_std_max', 0.5, 'rotation std (rad) at confidence 0', range=(1e-6, 10.0)),
)
NODE_PARAM_NAMES = frozenset(p.name for p in NODE_PARAMS)
SPECS = {p.name: p for p in NODE_PARAMS}


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """The reason ``value`` is invalid for ``spec``, or None when it is fine."""
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:  # (bool is not accepted for int / float)
        return f'{spec.name} must be a {expected.__name__}, got {value!r}'
    if spec.choices is not None and value not in spec.choices:
        return f"{spec.name} must be one of {', '.join(spec.choices)}; got '{value}'"
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        return f'{spec.name} must be in [{spec.range[0]}, {spec.range[1]}], got {value}'
    return None


def check_covariance(values: Mapping[str, float]) -> str | None:
    """Reason the covariance std pairs are inconsistent (min > max), or None."""
    for kind in ('position', 'rotation'):
        lo, hi = values[f'covariance.{kind}_std_min'], values[f'covariance.{kind}_std_max']
        if lo > hi:
            return f'covariance.{kind}_std_min ({lo}) must not exceed covariance.{kind}_std_max ({hi})'
    return None


# ----------------------------------------------------------------------------- backend parameters


def flatten(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """{'a': {'b': 1}, 'c': 2} -> {'a.b': 1, 'c': 2}."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f'{prefix}{k}'
        if isinstance(v, Mapping):
            out.update(flatten(v, key + '.'))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1, 'c': 2} -> {'a': {'b': 1}, 'c': 2}."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split('.')
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def coerce_backend_value(name: str, default: Any, value: Any) -> Any:
    """A ROS parameter value converted to the type of the backend default (int -> float, arrays -> list).

    ``value`` None (parameter not set) gives the default. Raises ConfigError on a type mismatch.
    """
    if value is None:
        return list(default) if isinstance(default, (list, tuple)) else default
    if default is None:
        return list(value) if not isinstance(value, (str, bool, int, float)) else value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (str, bytes, bool, int, float)):
            items = list(value)
            if default and all(isinstance(d, float) for d in default):
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                    return [float(v) for v in items]
            else:
                return items
    raise ConfigError(f'parameter {name} must be of the type of its default {default!r}, got {value!r}')


def ros_default(default: Any) -> Any:
    """The value a backend default is declared with (None where ROS cannot infer a type)."""
    if default is None:
        return None
    if isinstance(default, (list, tuple)):
        if not default:
            return None
        if all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in default):
            return [float(d) for d in default] if any(isinstance(d, float) for d in default) else list(default)
        return list(default)
    return default

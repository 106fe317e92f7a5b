"""sensor_msgs <-> numpy / :class:`Frame` conversion (own code, no cv_bridge).

Decoding (message -> array) builds a zero-copy strided view of ``msg.data`` that honours ``step``
row padding and ``is_bigendian``, then makes exactly one copy into the output layout (RGB uint8,
or float32 metres for depth). Every problem raises :class:`InputError` (a :class:`FrameError`)
whose ``cause`` is a short machine-readable key the node counts in its diagnostics.

Supported encodings:

- colour: rgb8, bgr8, rgba8, bgra8, mono8 (replicated to RGB), mono16 (high byte, replicated);
- depth: 16UC1 / mono16 (millimetres, 0 = invalid), 32FC1 (metres, NaN / Inf / <= 0 = invalid);
  invalid depth becomes NaN.
- CompressedImage: anything OpenCV decodes (jpeg, png, ...), and the ``compressedDepth`` transport
  (12-byte header + PNG; 16UC1 millimetres, or 32FC1 quantised inverse depth).
"""
from __future__ import annotations

import array
import struct
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..errors import FrameError
from ..types import Frame

# encoding -> (channels, dtype (little-endian; byte order set from is_bigendian))
ENCODINGS: dict[str, tuple[int, str]] = {
    'rgb8': (3, 'u1'), 'bgr8': (3, 'u1'), 'rgba8': (4, 'u1'), 'bgra8': (4, 'u1'),
    'mono8': (1, 'u1'), 'mono16': (1, 'u2'), '16UC1': (1, 'u2'), '32FC1': (1, 'f4'),
}
COLOR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16')
DEPTH_ENCODINGS = ('16UC1', 'mono16', '32FC1')
MAX_IMAGE_SIDE = 1 << 15  # larger sizes are treated as corrupt headers, not allocated


class InputError(FrameError):
    """A malformed input message; ``cause`` names the problem class (used as a diagnostics key)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


# ----------------------------------------------------------------------------- stamps


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time (raises InputError when out of range)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    if not -(1 << 31) <= sec < (1 << 31):
        raise InputError('bad_stamp', f'stamp {ns} ns does not fit a ROS time')
    return Time(sec=sec, nanosec=nanosec)


# ----------------------------------------------------------------------------- raw images


def _strided_view(msg: Image) -> np.ndarray:
    """Zero-copy (H, W, C) view of ``msg.data`` honouring step and byte order (validated)."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise InputError('unsupported_encoding',
                         f"unsupported image encoding '{enc}'; supported: {', '.join(ENCODINGS)}")
    channels, kind = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise InputError('empty_image', f'image is empty ({w}x{h})')
    if h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE:
        raise InputError('bad_size', f'image size {w}x{h} is implausible (max side {MAX_IMAGE_SIDE})')
    dtype = np.dtype(('>' if msg.is_bigendian else '<') + kind)
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes:
        raise InputError('bad_step', f"step {step} is smaller than width x pixel size = {row_bytes} "
                                     f"for {w}x{h} '{enc}'")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != step * h:
        raise InputError('data_size', f"data has {buf.size} bytes, expected step x height = {step} x {h} "
                                      f"= {step * h} for '{enc}'")
    return np.ndarray(shape=(h, w, channels), dtype=dtype, buffer=buf,
                      strides=(step, channels * dtype.itemsize, dtype.itemsize))


_CV_TO_RGB = {'bgr8': cv2.COLOR_BGR2RGB, 'bgra8': cv2.COLOR_BGRA2RGB, 'rgba8': cv2.COLOR_RGBA2RGB,
              'mono8': cv2.COLOR_GRAY2RGB}


def _to_rgb(view: np.ndarray, encoding: str) -> np.ndarray:
    """One copy of a (H, W, C) view into a contiguous (H, W, 3) RGB uint8 array."""
    h, w = view.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    if encoding in _CV_TO_RGB:  # OpenCV reads the strided view directly (20x faster than numpy for bgr)
        out = cv2.cvtColor(view, _CV_TO_RGB[encoding], dst=out)
    elif encoding == 'rgb8':
        out[...] = view
    elif encoding == 'mono16':
        np.right_shift(view, 8, out=out, casting='unsafe')
    else:
        raise InputError('unsupported_encoding', f"'{encoding}' is not a colour encoding; "
                                                 f"use one of {', '.join(COLOR_ENCODINGS)}")
    return out


_MASK_BLOCK_PX = 1 << 16  # pixels per block of the invalid-depth pass: its masks stay small (no image-sized temporary)


def _to_depth_m(view: np.ndarray, encoding: str, depth_scale: float = 1e-3) -> np.ndarray:
    """One copy of a (H, W, 1) depth view into float32 metres with NaN for invalid pixels.

    Invalid pixels are marked in row blocks so that the only image-sized allocation is the output."""
    v = view[..., 0]
    out = np.empty(v.shape, dtype=np.float32)
    rows = max(1, _MASK_BLOCK_PX // max(1, v.shape[1]))
    if encoding in ('16UC1', 'mono16'):
        np.multiply(v, np.float32(depth_scale), out=out, casting='unsafe')
        for r in range(0, v.shape[0], rows):  # 0 = invalid
            np.copyto(out[r:r + rows], np.float32(np.nan), where=v[r:r + rows] == 0)
    elif encoding == '32FC1':
        out[...] = v
        for r in range(0, v.shape[0], rows):  # NaN, Inf, 0 and negatives = invalid
            block = out[r:r + rows]
            invalid = np.greater(block, 0)  # False for NaN, 0, negatives
            invalid &= block < np.inf
            np.logical_not(invalid, out=invalid)
            np.copyto(block, np.float32(np.nan), where=invalid)
    else:
        raise InputError('unsupported_encoding', f"'{encoding}' is not a depth encoding; "
                                                 f"use one of {', '.join(DEPTH_ENCODINGS)}")
    return out


def image_msg_to_numpy(msg: Image) -> np.ndarray:
    """Image -> array in the message's own layout and native byte order: (H, W) for one channel,
    (H, W, C) otherwise (one copy; no colour or unit conversion)."""
    view = _strided_view(msg)
    out = np.empty(view.shape, dtype=view.dtype.newbyteorder('='))
    out[...] = view
    return out[..., 0] if out.shape[2] == 1 else out


def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """Colour Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16) -> (H, W, 3) RGB uint8 (one copy)."""
    return _to_rgb(_strided_view(msg), msg.encoding)


def image_msg_to_depth(msg: Image, depth_scale: float = 1e-3) -> np.ndarray:
    """Depth Image (16UC1 / mono16 millimetres, 32FC1 metres) -> (H, W) float32 metres, NaN invalid."""
    return _to_depth_m(_strided_view(msg), msg.encoding, depth_scale)


def numpy_to_image_msg(arr: np.ndarray, encoding: str, stamp_ns: int = 0, frame_id: str = '',
                       step: int | None = None, is_bigendian: bool = False) -> Image:
    """Array -> Image with ``encoding``. ``arr`` is (H, W) or (H, W, C) already in that encoding's
    channel order and dtype (uint8, uint16 or float32). ``step`` > row size adds row padding;
    ``is_bigendian`` writes multi-byte data big-endian (both mostly for tests and bag writers)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding '{encoding}'; supported: {', '.join(ENCODINGS)}")
    channels, kind = ENCODINGS[encoding]
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] != channels:
        raise ValueError(f"'{encoding}' needs {channels} channel(s), got array of shape {np.shape(arr)}")
    dtype = np.dtype(('>' if is_bigendian else '<') + kind)
    if a.dtype.kind != dtype.kind or a.dtype.itemsize != dtype.itemsize:
        raise ValueError(f"'{encoding}' needs dtype {np.dtype(kind)}, got {a.dtype}")
    h, w = a.shape[:2]
    row = w * channels * dtype.itemsize
    step = row if step is None else int(step)
    if step < row:
        raise ValueError(f'step {step} smaller than row size {row}')
    data = array.array('B', bytes(step * h))
    dst = np.ndarray(shape=(h, w, channels), dtype=dtype, buffer=np.frombuffer(data, dtype=np.uint8),
                     strides=(step, channels * dtype.itemsize, dtype.itemsize))
    dst[...] = a  # the one copy (byte-swaps when big-endian)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bool(is_bigendian)), step=step)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = data
    return msg


# ----------------------------------------------------------------------------- compressed images

_COMPRESSED_DEPTH_HEADER = struct.Struct('<i2f')  # format enum, depthQuantA, depthQuantB


def _imdecode(payload: Any, flags: int, fmt: str = '') -> np.ndarray:
    buf = np.frombuffer(payload, dtype=np.uint8)
    if buf.size == 0:
        raise InputError('decode_failed', f'compressed image (format {fmt!r}) has no data')
    img = cv2.imdecode(buf, flags)
    if img is None or img.size == 0:
        raise InputError('decode_failed', f'OpenCV could not decode the compressed image ({buf.size} bytes, '
                                          f'format {fmt!r})')
    return img


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """CompressedImage (jpeg, png, ...) -> (H, W, 3) RGB uint8."""
    img = _imdecode(msg.data, cv2.IMREAD_UNCHANGED, msg.format)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise InputError('unsupported_encoding', f'compressed colour image decodes to {img.dtype}, need 8 bit')
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def compressed_msg_to_depth(msg: CompressedImage, depth_scale: float = 1e-3) -> np.ndarray:
    """CompressedImage of the ``compressedDepth`` transport (or a plain 16-bit PNG in millimetres)
    -> (H, W) float32 metres, NaN invalid."""
    fmt = msg.format
    data = bytes(msg.data)
    if 'compresseddepth' in fmt.lower().replace(' ', ''):
        if len(data) <= _COMPRESSED_DEPTH_HEADER.size:
            raise InputError('decode_failed', 'compressedDepth message shorter than its 12-byte header')
        _, quant_a, quant_b = _COMPRESSED_DEPTH_HEADER.unpack_from(data)
        raw = _imdecode(data[_COMPRESSED_DEPTH_HEADER.size:], cv2.IMREAD_UNCHANGED, fmt)
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise InputError('decode_failed', f'compressedDepth payload ({fmt!r}) is not a 16-bit single-channel PNG')
        if fmt.split(';')[0].strip() == '32FC1':  # quantised inverse depth: d = A / (v - B)
            out = np.full(raw.shape, np.nan, dtype=np.float32)
            valid = raw != 0
            out[valid] = quant_a / (raw[valid].astype(np.float32) - quant_b)
            out[~(out > 0) | ~np.isfinite(out)] = np.nan
            return out
        return _to_depth_m(raw[..., None], '16UC1', depth_scale)
    raw = _imdecode(data, cv2.IMREAD_UNCHANGED, fmt)
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise InputError('unsupported_encoding', 'compressed depth must be single-channel 16 bit (millimetres)')
    return _to_depth_m(raw[..., None], '16UC1', depth_scale)


def rgb_to_compressed_msg(rgb: np.ndarray, fmt: str = 'jpeg', stamp_ns: int = 0, frame_id: str = '',
                          quality: int = 95) -> CompressedImage:
    """(H, W, 3) RGB uint8 -> CompressedImage ('jpeg' or 'png'), as image_transport's compressed."""
    ext = {'jpeg': '.jpg', 'jpg': '.jpg', 'png': '.png'}.get(fmt)
    if ext is None:
        raise ValueError(f"unsupported compressed format '{fmt}'; use jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == '.jpg' else []
    ok, enc = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError('OpenCV could not encode the image')
    msg = CompressedImage(format=f"rgb8; {'jpeg' if ext == '.jpg' else 'png'} compressed bgr8")
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = array.array('B', enc.tobytes())
    return msg


def depth_to_compressed_msg(depth_m: np.ndarray, stamp_ns: int = 0, frame_id: str = '') -> CompressedImage:
    """(H, W) float32 metres -> CompressedImage of the compressedDepth transport (16UC1 PNG)."""
    mm = _depth_to_mm(depth_m)
    ok, enc = cv2.imencode('.png', mm)
    if not ok:
        raise ValueError('OpenCV could not encode the depth image')
    msg = CompressedImage(format='16UC1; compressedDepth png')
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = array.array('B', _COMPRESSED_DEPTH_HEADER.pack(0, 0.0, 0.0) + enc.tobytes())
    return msg


# ----------------------------------------------------------------------------- camera info


def camera_info_to_K(msg: CameraInfo, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """CameraInfo -> validated 3x3 K for the image as published.

    Applies ``roi`` and ``binning`` (K refers to the full-resolution sensor). ``image_size`` =
    (width, height) of the matching image: the camera_info size (after roi / binning) must equal it.
    Raises :class:`InputError` naming the problem.
    """
    k = np.asarray(msg.k, dtype=np.float64)
    if k.shape != (9,):
        raise InputError('camera_info_invalid', f'camera_info K has {k.size} values, expected 9')
    K = k.reshape(3, 3).copy()
    if not np.all(np.isfinite(K)):
        raise InputError('camera_info_nonfinite', f'camera_info K contains NaN or Inf: {K.tolist()}')
    if not np.any(K):
        raise InputError('camera_info_invalid', 'camera_info K is all zeros (camera not calibrated)')
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError('camera_info_invalid', f'camera_info K has non-positive focal lengths '
                                                f'(fx={K[0, 0]}, fy={K[1, 1]})')
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0:
        raise InputError('camera_info_invalid', f'camera_info K is not an upper-triangular intrinsics '
                                                f'matrix with last row [0, 0, 1]: {K.tolist()}')
    w, h = int(msg.width), int(msg.height)
    roi = msg.roi
    if roi.width > 0 and roi.height > 0 and (roi.width, roi.height) != (w, h):
        K[0, 2] -= roi.x_offset
        K[1, 2] -= roi.y_offset
        w, h = int(roi.width), int(roi.height)
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    if bx > 1 or by > 1:
        K[0, :] /= bx
        K[1, :] /= by
        w, h = w // bx, h // by
    if image_size is not None and (w, h) != tuple(image_size):
        raise InputError('camera_info_size_mismatch',
                         f'camera_info size {w}x{h} differs from image size {image_size[0]}x{image_size[1]}')
    return K


def K_to_camera_info(K: np.ndarray, width: int, height: int, stamp_ns: int = 0, frame_id: str = '') -> CameraInfo:
    """3x3 K -> CameraInfo (no distortion, identity R, P = [K | 0])."""
    K = np.asarray(K, dtype=np.float64)
    msg = CameraInfo(width=int(width), height=int(height), distortion_model='plumb_bob')
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.d = [0.0] * 5
    msg.k = K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist()
    return msg


# ----------------------------------------------------------------------------- frames


def _depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    d = np.asarray(depth_m, dtype=np.float32)
    with np.errstate(invalid='ignore'):
        mm = np.where(np.isfinite(d) & (d > 0), np.rint(d * 1000.0), 0.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def frame_to_messages(frame: Frame, depth_encoding: str = '16UC1') -> tuple[Image, CameraInfo, Image | None]:
    """Frame -> (rgb8 Image, CameraInfo, depth Image or None), all with the frame's stamp and frame_id.

    depth_encoding: '16UC1' (millimetres, NaN -> 0) or '32FC1' (metres, NaN kept).
    """
    if depth_encoding not in ('16UC1', '32FC1'):
        raise ValueError(f"depth_encoding must be '16UC1' or '32FC1', got '{depth_encoding}'")
    frame.validate()
    image = numpy_to_image_msg(frame.rgb, 'rgb8', frame.stamp_ns, frame.frame_id)
    info = K_to_camera_info(frame.K, frame.width, frame.height, frame.stamp_ns, frame.frame_id)
    depth = None
    if frame.depth is not None:
        d = _depth_to_mm(frame.depth) if depth_encoding == '16UC1' else frame.depth.astype(np.float32)
        depth = numpy_to_image_msg(d, depth_encoding, frame.stamp_ns, frame.frame_id)
    return image, info, depth


def messages_to_frame(image: Image | CompressedImage, camera_info: CameraInfo,
                      depth: Image | CompressedImage | None = None, depth_scale: float = 1e-3) -> Frame:
    """(Image or CompressedImage, CameraInfo, optional depth) -> validated :class:`Frame`.

    Stamp and frame_id come from the image header. Raises :class:`InputError` (a FrameError) naming
    the problem: bad encoding / sizes / step / data length, invalid K, size mismatches.
    """
    if isinstance(image, CompressedImage):
        rgb = compressed_msg_to_rgb(image)
    else:
        rgb = image_msg_to_rgb(image)
    h, w = rgb.shape[:2]
    K = camera_info_to_K(camera_info, (w, h))
    depth_m = None
    if depth is not None:
        depth_m = (compressed_msg_to_depth(depth, depth_scale) if isinstance(depth, CompressedImage)
                   else image_msg_to_depth(depth, depth_scale))
        if depth_m.shape != (h, w):
            raise InputError('depth_size_mismatch', f'depth size {depth_m.shape[1]}x{depth_m.shape[0]} differs '
                                                    f'from image size {w}x{h}')
    try:
        return Frame(rgb=rgb, K=K, depth=depth_m, stamp_ns=stamp_to_ns(image.header.stamp),
                     frame_id=image.header.frame_id)
    except InputError:
        raise
    except FrameError as exc:
        raise InputError('invalid_frame', str(exc)) from exc


__all__ = [
    'COLOR_ENCODINGS', 'DEPTH_ENCODINGS', 'ENCODINGS', 'InputError', 'K_to_camera_info', 'camera_info_to_K',
    'compressed_msg_to_depth', 'compressed_msg_to_rgb', 'depth_to_compressed_msg', 'frame_to_messages',
    'image_msg_to_depth', 'image_msg_to_numpy', 'image_msg_to_rgb', 'messages_to_frame', 'ns_to_stamp',
    'numpy_to_image_msg', 'rgb_to_compressed_msg', 'stamp_to_ns',
]

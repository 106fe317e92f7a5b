"""Image / CameraInfo <-> numpy / Frame conversion: exact round trips and clear errors."""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from relpose_ros.errors import FrameError
from relpose_ros.ros.conversions import (
    ENCODINGS, InputError, K_to_camera_info, camera_info_to_K, compressed_msg_to_depth, compressed_msg_to_rgb,
    depth_to_compressed_msg, frame_to_messages, image_msg_to_depth, image_msg_to_numpy, image_msg_to_rgb,
    messages_to_frame, ns_to_stamp, numpy_to_image_msg, rgb_to_compressed_msg, stamp_to_ns)
from relpose_ros.types import Frame

H, W = 7, 11  # odd sizes catch stride mistakes
K = np.array([[520.0, 0.0, 5.5], [0.0, 510.0, 3.5], [0.0, 0.0, 1.0]])


def _random(encoding: str, rng: np.random.Generator) -> np.ndarray:
    channels, kind = ENCODINGS[encoding]
    shape = (H, W) if channels == 1 else (H, W, channels)
    if kind == 'f4':
        return rng.uniform(0.1, 9.0, shape).astype(np.float32)
    info = np.iinfo(np.dtype(kind))
    return rng.integers(1, info.max, shape, endpoint=True).astype(np.dtype(kind))


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('padding', [0, 5])
@pytest.mark.parametrize('big_endian', [False, True])
def test_raw_round_trip_every_encoding(encoding, padding, big_endian):
    rng = np.random.default_rng(0)
    arr = _random(encoding, rng)
    row = W * ENCODINGS[encoding][0] * np.dtype(ENCODINGS[encoding][1]).itemsize
    msg = numpy_to_image_msg(arr, encoding, stamp_ns=5, frame_id='cam', step=row + padding, is_bigendian=big_endian)
    assert msg.step == row + padding and len(msg.data) == (row + padding) * H
    assert msg.is_bigendian == int(big_endian)
    back = image_msg_to_numpy(msg)
    assert back.dtype == arr.dtype.newbyteorder('=') and np.array_equal(back, arr)
    assert back.flags.c_contiguous


def test_big_endian_bytes_are_really_big_endian():
    arr = np.array([[0x0102, 0x0304]], dtype=np.uint16)
    msg = numpy_to_image_msg(arr, '16UC1', is_bigendian=True)
    assert bytes(msg.data) == b'\x01\x02\x03\x04'
    msg = numpy_to_image_msg(arr, '16UC1', is_bigendian=False)
    assert bytes(msg.data) == b'\x02\x01\x04\x03'
    # a hand-built big-endian message decodes to the right millimetres
    msg.data, msg.is_bigendian = array.array('B', b'\x03\xe8\x00\x00'), 1
    depth = image_msg_to_depth(msg)
    assert depth[0, 0] == pytest.approx(1.0) and np.isnan(depth[0, 1])


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16'])
@pytest.mark.parametrize('padding', [0, 3])
def test_colour_to_rgb_matches_opencv(encoding, padding):
    rng = np.random.default_rng(1)
    arr = _random(encoding, rng)
    row = W * ENCODINGS[encoding][0] * np.dtype(ENCODINGS[encoding][1]).itemsize
    rgb = image_msg_to_rgb(numpy_to_image_msg(arr, encoding, step=row + padding, is_bigendian=True))
    expected = {
        'rgb8': lambda a: a,
        'bgr8': lambda a: cv2.cvtColor(a, cv2.COLOR_BGR2RGB),
        'rgba8': lambda a: cv2.cvtColor(a, cv2.COLOR_RGBA2RGB),
        'bgra8': lambda a: cv2.cvtColor(a, cv2.COLOR_BGRA2RGB),
        'mono8': lambda a: cv2.cvtColor(a, cv2.COLOR_GRAY2RGB),
        'mono16': lambda a: cv2.cvtColor((a >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB),
    }[encoding](arr)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3) and np.array_equal(rgb, expected)


@pytest.mark.parametrize('big_endian', [False, True])
def test_depth_16uc1_millimetres_to_metres(big_endian):
    mm = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 37
    d = image_msg_to_depth(numpy_to_image_msg(mm, '16UC1', step=W * 2 + 4, is_bigendian=big_endian))
    assert d.dtype == np.float32
    assert np.isnan(d[0, 0])  # 0 mm = invalid
    np.testing.assert_allclose(d.reshape(-1)[1:], mm.reshape(-1)[1:] / 1000.0, rtol=1e-6)


@pytest.mark.parametrize('big_endian', [False, True])
def test_depth_32fc1_invalid_values_become_nan(big_endian):
    m = np.full((H, W), 2.5, dtype=np.float32)
    m[0, :4] = [0.0, np.nan, np.inf, -1.0]
    d = image_msg_to_depth(numpy_to_image_msg(m, '32FC1', step=W * 4 + 8, is_bigendian=big_endian))
    assert np.isnan(d[0, :4]).all()
    assert np.all(d[1:] == 2.5) and np.all(d[0, 4:] == 2.5)


def _camera_image(encoding: str, rng: np.random.Generator, h: int = 480, w: int = 640) -> np.ndarray:
    """A camera-sized image; depth with invalid pixels (0, and NaN / Inf / negative for 32FC1)."""
    if encoding in ('rgb8', 'bgr8'):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if encoding == '16UC1':
        mm = rng.integers(0, 8000, (h, w), dtype=np.uint16)
        mm[::9] = 0
        return mm
    m = rng.uniform(0.2, 8.0, (h, w)).astype(np.float32)
    m[::9, ::2], m[::9, 1::4], m[1::9] = np.nan, np.inf, -1.0
    return m


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', '16UC1', '32FC1'])
@pytest.mark.parametrize('padding', [0, 8])
@pytest.mark.parametrize('big_endian', [False, True])
def test_decoding_copies_once_and_does_not_alias_the_message(encoding, padding, big_endian):
    """The output is the only image-sized allocation of a decode: no intermediate copy (e.g. a contiguous or
    byte-swapped version of the strided view, inside numpy or OpenCV) and no image-sized mask."""
    import tracemalloc

    arr = _camera_image(encoding, np.random.default_rng(2))
    msg = numpy_to_image_msg(arr, encoding, step=arr[0].nbytes + padding, is_bigendian=big_endian)
    decode = image_msg_to_depth if encoding in ('16UC1', '32FC1') else image_msg_to_rgb
    decode(msg)  # warm up (lazy initialisation is not per-frame work)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = decode(msg)
    peak = tracemalloc.get_traced_memory()[1] - base
    if not tracing:
        tracemalloc.stop()
    assert out.nbytes <= peak, 'tracemalloc did not see the output allocation: the check would be vacuous'
    assert peak <= 1.15 * out.nbytes, (f'{encoding}: decoding allocated {peak} bytes for a {out.nbytes}-byte output '
                                       '(more than one image copy)')
    assert not np.shares_memory(out, np.frombuffer(msg.data, dtype=np.uint8))
    assert out.base is None and out.flags.c_contiguous  # a fresh array, not a view of a temporary
    if decode is image_msg_to_rgb:
        assert np.array_equal(out, arr if encoding == 'rgb8' else arr[..., ::-1])
    else:
        expected = arr * np.float32(1e-3) if encoding == '16UC1' else arr
        with np.errstate(invalid='ignore'):
            expected = np.where((expected > 0) & (expected < np.inf), expected, np.nan).astype(np.float32)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize('mutate, cause', [
    (lambda m: setattr(m, 'encoding', 'yuv422'), 'unsupported_encoding'),
    (lambda m: setattr(m, 'encoding', ''), 'unsupported_encoding'),
    (lambda m: setattr(m, 'height', 0), 'empty_image'),
    (lambda m: setattr(m, 'width', 0), 'empty_image'),
    (lambda m: setattr(m, 'step', W * 3 - 1), 'bad_step'),
    (lambda m: setattr(m, 'data', m.data[:-1]), 'data_size'),
    (lambda m: setattr(m, 'data', m.data + array.array('B', [0])), 'data_size'),
    (lambda m: setattr(m, 'height', H + 1), 'data_size'),
    (lambda m: setattr(m, 'width', 1 << 20), 'bad_size'),
])
def test_bad_images_raise_input_error_naming_the_cause(mutate, cause):
    msg = numpy_to_image_msg(_random('rgb8', np.random.default_rng(3)), 'rgb8')
    mutate(msg)
    with pytest.raises(InputError) as info:
        image_msg_to_rgb(msg)
    assert info.value.cause == cause and isinstance(info.value, FrameError)
    assert str(info.value)  # a readable message


def test_depth_encoding_as_colour_and_colour_as_depth_are_rejected():
    with pytest.raises(InputError, match='not a colour encoding'):
        image_msg_to_rgb(numpy_to_image_msg(np.ones((H, W), np.float32), '32FC1'))
    with pytest.raises(InputError, match='not a depth encoding'):
        image_msg_to_depth(numpy_to_image_msg(np.ones((H, W, 3), np.uint8), 'rgb8'))


def test_camera_info_round_trip_and_validation():
    info = K_to_camera_info(K, W, H, stamp_ns=3, frame_id='cam')
    np.testing.assert_array_equal(camera_info_to_K(info, (W, H)), K)
    for bad_k, cause in [([0.0] * 9, 'camera_info_invalid'),
                         ([np.nan] + [0.0] * 8, 'camera_info_nonfinite'),
                         ([520.0, 0, 5.5, 0, np.inf, 3.5, 0, 0, 1], 'camera_info_nonfinite'),
                         ([-5.0, 0, 5.5, 0, 510, 3.5, 0, 0, 1], 'camera_info_invalid'),
                         ([520.0, 0, 5.5, 0, 510, 3.5, 0, 0, 0], 'camera_info_invalid')]:
        info.k = bad_k
        with pytest.raises(InputError) as e:
            camera_info_to_K(info, (W, H))
        assert e.value.cause == cause
    info = K_to_camera_info(K, W, H)
    with pytest.raises(InputError, match='differs from image size') as e:
        camera_info_to_K(info, (W + 1, H))
    assert e.value.cause == 'camera_info_size_mismatch'


def test_camera_info_roi_and_binning_adjust_K():
    info = K_to_camera_info(K, 640, 480)
    info.binning_x = info.binning_y = 2
    K2 = camera_info_to_K(info, (320, 240))
    np.testing.assert_allclose(K2[:2], K[:2] / 2)
    info = K_to_camera_info(K, 640, 480)
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 10, 20, 100, 50
    K3 = camera_info_to_K(info, (100, 50))
    assert K3[0, 2] == K[0, 2] - 10 and K3[1, 2] == K[1, 2] - 20


def test_stamps_round_trip():
    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789):
        assert stamp_to_ns(ns_to_stamp(ns)) == ns
    with pytest.raises(InputError):
        ns_to_stamp(1 << 70)


def _frame(rng, depth=True) -> Frame:
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    d = rng.uniform(0.3, 5.0, (H, W)).astype(np.float32)
    d[0, 0] = np.nan
    return Frame(rgb=rgb, K=K, depth=d if depth else None, stamp_ns=1_234_567_890_123, frame_id='camera_optical')


@pytest.mark.parametrize('depth_encoding', ['16UC1', '32FC1'])
def test_frame_messages_round_trip(depth_encoding):
    frame = _frame(np.random.default_rng(4))
    image, info, depth = frame_to_messages(frame, depth_encoding=depth_encoding)
    assert image.encoding == 'rgb8' and depth.encoding == depth_encoding
    assert image.header.frame_id == info.header.frame_id == depth.header.frame_id == 'camera_optical'
    back = messages_to_frame(image, info, depth)
    assert back.stamp_ns == frame.stamp_ns and back.frame_id == frame.frame_id
    assert np.array_equal(back.rgb, frame.rgb) and np.array_equal(back.K, frame.K)
    assert np.array_equal(np.isnan(back.depth), np.isnan(frame.depth))
    tol = 5e-4 if depth_encoding == '16UC1' else 0.0
    np.testing.assert_allclose(back.depth, frame.depth, atol=tol)
    assert frame_to_messages(_frame(np.random.default_rng(5), depth=False))[2] is None


def test_messages_to_frame_rejects_mismatches():
    frame = _frame(np.random.default_rng(6))
    image, info, depth = frame_to_messages(frame)
    small = numpy_to_image_msg(np.ones((H - 1, W), np.uint16), '16UC1')
    with pytest.raises(InputError, match='depth size') as e:
        messages_to_frame(image, info, small)
    assert e.value.cause == 'depth_size_mismatch'
    info.width = W + 2
    with pytest.raises(InputError, match='camera_info size'):
        messages_to_frame(image, info, depth)


def test_compressed_colour_and_depth():
    frame = _frame(np.random.default_rng(7))
    png = rgb_to_compressed_msg(frame.rgb, 'png', stamp_ns=9, frame_id='c')
    assert np.array_equal(compressed_msg_to_rgb(png), frame.rgb)
    jpg = rgb_to_compressed_msg(frame.rgb, 'jpeg')
    assert compressed_msg_to_rgb(jpg).shape == (H, W, 3)
    cd = depth_to_compressed_msg(frame.depth)
    d = compressed_msg_to_depth(cd)
    assert np.isnan(d[0, 0]) and np.nanmax(np.abs(d - frame.depth)) <= 5e-4
    back = messages_to_frame(png, K_to_camera_info(K, W, H), cd)
    assert back.stamp_ns == 9 and back.frame_id == 'c' and np.array_equal(back.rgb, frame.rgb)
    png.data = array.array('B', b'not an image')
    with pytest.raises(InputError) as e:
        compressed_msg_to_rgb(png)
    assert e.value.cause == 'decode_failed'


def test_real_7scenes_frame_round_trip(seven_scenes):
    from relpose_ros.data.seven_scenes import SevenScenesSequence

    frame = SevenScenesSequence(seven_scenes).load(0).frame
    for enc in ('16UC1', '32FC1'):
        image, info, depth = frame_to_messages(frame, depth_encoding=enc)
        back = messages_to_frame(image, info, depth)
        assert np.array_equal(back.rgb, frame.rgb)
        np.testing.assert_allclose(back.depth, frame.depth, atol=5e-4, equal_nan=True)
    # the same image as bgr8 with row padding
    bgr = numpy_to_image_msg(np.ascontiguousarray(frame.rgb[..., ::-1]), 'bgr8', step=frame.width * 3 + 64)
    assert np.array_equal(image_msg_to_rgb(bgr), frame.rgb)

"""Exceptions with messages that name the problem."""


class RelposeError(Exception):
    """Base class of every error raised by relpose_ros."""


class ConfigError(RelposeError, ValueError):
    """A configuration value is invalid (unknown backend, bad parameter, unavailable device)."""


class WeightsError(ConfigError):
    """A weights file is missing, unreadable or does not match the model."""


class FrameError(RelposeError, ValueError):
    """An input frame is malformed (shape, dtype, intrinsics, depth size)."""


class DatasetError(RelposeError, ValueError):
    """A dataset folder or bag is not in the expected layout."""

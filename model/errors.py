"""Typed errors raised by the model layer.

Each input error carries a stable ``code`` that the HTTP layer maps to a 4xx
status in one place (``deployments/http/errors.py``); nothing here knows about HTTP.
"""


class ModelInputError(ValueError):
    """The caller sent something the model cannot use."""

    code = "invalid_input"


class AudioDecodeError(ModelInputError):
    code = "audio_undecodable"


class AudioEmptyError(ModelInputError):
    code = "audio_empty"


class AudioTooShortError(AudioEmptyError):
    """Shorter than the audio encoder's receptive field."""

    code = "audio_too_short"


class AudioNonFiniteError(ModelInputError):
    code = "audio_non_finite"


class AudioTooLongError(ModelInputError):
    code = "audio_too_long"


class AudioTooLargeError(ModelInputError):
    code = "audio_too_large"


class AudioFormatError(ModelInputError):
    """Sample rate or channel count outside the configured limits."""

    code = "audio_format_not_allowed"


class TextTooLongError(ModelInputError):
    code = "text_too_long"


class BundleError(RuntimeError):
    """A model bundle is missing, corrupt or inconsistent. Raised at load time."""

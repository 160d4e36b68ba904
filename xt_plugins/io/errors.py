"""Exceptions raised by the image sources: each message starts with the file it is about.

.. versionadded:: 0.1
"""

from __future__ import annotations

__all__ = ["ImageReadError", "MissingMPPError", "SlideOpenError"]


class ImageReadError(RuntimeError):
    """An image file could not be opened or a window of it could not be read.

    The message starts with the file path and says what failed (open, or which window).
    """


class SlideOpenError(ImageReadError):
    """OpenSlide could not open a whole-slide image; the message carries OpenSlide's reason."""


class MissingMPPError(ValueError):
    """A resolution in microns per pixel was asked of a slide that does not record its own.

    Pass the slide's level-0 resolution explicitly (``slide_mpp=``, CLI ``--slide-mpp``) or pick
    a pyramid level with ``level=``.
    """

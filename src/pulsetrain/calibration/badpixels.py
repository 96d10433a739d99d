"""Bad-pixel flags: a uint32 bit field, 0 meaning a good pixel.

The bit positions follow European XFEL's ``extra.calibration.BadPixels`` (bits 0-23, 30, 31), so
masks written by pulsetrain decode with EuXFEL tools and vice versa.  Which flags pulsetrain
itself sets, and from which statistics, is described in ``docs/calibration.md``.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["BadPixels", "describe_mask"]


class BadPixels(enum.IntFlag):
    """Reasons a pixel (in one gain stage and memory cell) is bad; a uint32 bit field.

    Flags set by :mod:`pulsetrain.calibration`:

    ``OFFSET_OUT_OF_THRESHOLD``
        dark offset outside the robust range of its ASIC (median +- k * MAD).
    ``NOISE_OUT_OF_THRESHOLD``
        dark noise outside the robust range of its ASIC, or (almost) zero noise (dead pixel).
    ``OFFSET_NOISE_EVAL_ERROR``
        offset or noise not finite although dark frames existed.
    ``NO_DARK_DATA``
        fewer than two dark frames of this memory cell in a gain stage.
    ``CI_EVAL_ERROR``
        relative gain not finite or not positive (see :func:`combine_constants`).
    ``GAIN_THRESHOLDING_ERROR``
        the digital gain levels of adjacent stages are too close (or in the wrong order) to
        separate with a threshold.

    The other flags exist so masks from other sources can be decoded and combined.
    """

    OFFSET_OUT_OF_THRESHOLD = 1 << 0
    NOISE_OUT_OF_THRESHOLD = 1 << 1
    OFFSET_NOISE_EVAL_ERROR = 1 << 2
    NO_DARK_DATA = 1 << 3
    CI_GAIN_OF_OF_THRESHOLD = 1 << 4  # sic: spelled as in EuXFEL's enum
    CI_LINEAR_DEVIATION = 1 << 5
    CI_EVAL_ERROR = 1 << 6
    FF_GAIN_EVAL_ERROR = 1 << 7
    FF_GAIN_DEVIATION = 1 << 8
    FF_NO_ENTRIES = 1 << 9
    CI2_EVAL_ERROR = 1 << 10
    VALUE_IS_NAN = 1 << 11
    VALUE_OUT_OF_RANGE = 1 << 12
    GAIN_THRESHOLDING_ERROR = 1 << 13
    DATA_STD_IS_ZERO = 1 << 14
    ASIC_STD_BELOW_NOISE = 1 << 15
    INTERPOLATED = 1 << 16
    NOISY_ADC = 1 << 17
    OVERSCAN = 1 << 18
    NON_SENSITIVE = 1 << 19
    NON_LIN_RESPONSE_REGION = 1 << 20
    WRONG_GAIN_VALUE = 1 << 21
    NON_STANDARD_SIZE = 1 << 22
    EXPERT_CHOICE = 1 << 23
    USER1 = 1 << 30
    USER2 = 1 << 31

    @classmethod
    def dark_flags(cls) -> BadPixels:
        """All flags that :func:`~pulsetrain.calibration.characterize_dark` can set."""
        return (
            cls.OFFSET_OUT_OF_THRESHOLD
            | cls.NOISE_OUT_OF_THRESHOLD
            | cls.OFFSET_NOISE_EVAL_ERROR
            | cls.NO_DARK_DATA
            | cls.GAIN_THRESHOLDING_ERROR
        )


def describe_mask(value: int | np.integer) -> list[str]:
    """Names of the flags set in one mask value, lowest bit first.

    Parameters
    ----------
    value
        A mask value (for instance ``corrected.mask[0, 10, 20]``).

    Returns
    -------
    list of str
        Flag names; bits without a name appear as ``"BIT<n>"``.
    """
    value = int(value)
    known = {int(flag): flag.name for flag in BadPixels}
    return [known.get(1 << bit, f"BIT{bit}") for bit in range(32) if value & (1 << bit)]

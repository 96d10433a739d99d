"""A side-view microscope camera showing the water jet and the sample relative to the beam."""

from __future__ import annotations

import numpy as np

from pulsetrain.sim.parameters import SampleParameters
from pulsetrain.sim.rng import Stream, stream

__all__ = ["CAMERA_SOURCE", "SidemicCamera"]

#: Output source of the camera.
CAMERA_SOURCE = "SPB_IRU_CAM/CAM/SIDEMIC:daqOutput"


class SidemicCamera:
    """A small camera image of the interaction region.

    The beam passes through the image centre.  The jet is a vertical bright stripe through
    the beam; the sample is a bright Gaussian blob (rms ``width_mm``) whose centre appears
    ``(sample_centre_mm - position) * px_per_mm`` pixels right of the beam, so it sits on the
    beam when the motor is at the sample centre.  Counts have shot noise (Gaussian with
    variance equal to the mean, which is at least ``background``).

    Parameters
    ----------
    shape : (int, int)
        ``(rows, columns)`` of the image.
    px_per_mm : float
        Magnification.
    background, jet_counts, sample_counts : float
        Mean counts of the background, the jet's peak and the sample's peak.
    """

    def __init__(
        self,
        shape: tuple[int, int] = (256, 256),
        px_per_mm: float = 40.0,
        background: float = 100.0,
        jet_counts: float = 600.0,
        sample_counts: float = 1500.0,
    ):
        self.shape = (int(shape[0]), int(shape[1]))
        self.px_per_mm = float(px_per_mm)
        self.background = float(background)
        self.jet_counts = float(jet_counts)
        self.sample_counts = float(sample_counts)

    def sample_column(self, sample_position_mm: float, sample: SampleParameters) -> float:
        """Column (pixel-centre coordinates) where the sample's centre appears."""
        return (
            0.5 * (self.shape[1] - 1)
            + (sample.sample_centre_mm - sample_position_mm) * self.px_per_mm
        )

    def image(
        self, seed: int, train_id: int, sample_position_mm: float, sample: SampleParameters
    ) -> dict:
        """Keys of :data:`CAMERA_SOURCE` for one train: ``data.image.pixels`` (uint16) and
        ``data.image.dims`` (the pixels' shape)."""
        ny, nx = self.shape
        cols = np.arange(nx, dtype=np.float32)
        rows = np.arange(ny, dtype=np.float32)
        cx0 = 0.5 * (nx - 1)
        cy0 = 0.5 * (ny - 1)
        jet = self.jet_counts * np.exp(-0.5 * ((cols - cx0) / 3.0) ** 2)
        sig = sample.width_mm * self.px_per_mm
        sx = self.sample_column(sample_position_mm, sample)
        blob_x = np.exp(-0.5 * ((cols - sx) / sig) ** 2)
        blob_y = np.exp(-0.5 * ((rows - cy0) / sig) ** 2)
        mean = (
            self.background + jet[None, :] + self.sample_counts * blob_y[:, None] * blob_x[None, :]
        )
        rng = stream(seed, Stream.CAMERA, int(train_id))
        noisy = rng.standard_normal(mean.shape, dtype=np.float32)
        noisy *= np.sqrt(mean, dtype=np.float32)
        noisy += mean
        np.rint(noisy, out=noisy)
        pixels = np.clip(noisy, 0, 65535).astype(np.uint16)
        return {
            "data.image.pixels": pixels,
            "data.image.dims": np.array([ny, nx], dtype=np.uint64),
        }

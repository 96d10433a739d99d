"""The geometry properties shared by the devices that assemble a quadrant detector's image.

:class:`QuadrantGeometry` is a mixin for :class:`~pulsetrain.runtime.device.Device` classes:
it adds the ``quad_positions`` and ``beam_centre`` properties and checks them once, so that
every device that draws the assembled image (the preview, the analysis devices) is configured
the same way.
"""

from __future__ import annotations

from pulsetrain.errors import ConfigurationError
from pulsetrain.runtime.device import Property

__all__ = ["QuadrantGeometry"]


class QuadrantGeometry:
    """Mixin: quadrant positions and beam centre of the assembled image."""

    quad_positions = Property(
        list,
        [],
        access="init",
        description="AGIPD-1M quadrant positions [[x, y] px] × 4 (empty: the canonical ones)",
    )
    beam_centre = Property(
        list,
        [0.0, 0.0],
        access="init",
        unit="px",
        description="beam (x, y) from the geometry origin, in pixels",
    )

    def geometry_args(self) -> tuple[list[tuple[float, float]] | None, tuple[float, float]]:
        """``(quad_positions or None for the canonical ones, beam_centre_px)``, checked.

        Raises
        ------
        ConfigurationError
            If there are not 4 quadrant positions, or the beam centre is not (x, y).
        """
        quads = [tuple(map(float, q)) for q in self.quad_positions] or None
        if quads is not None and len(quads) != 4:
            raise ConfigurationError("quad_positions needs 4 (x, y) pairs")
        if len(self.beam_centre) != 2:
            raise ConfigurationError("beam_centre needs (x, y)")
        return quads, (float(self.beam_centre[0]), float(self.beam_centre[1]))

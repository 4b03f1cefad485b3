"""Synthetic DECam drift-scan nights: images, DQ masks, truth tables and real-time delivery.

The public API (stable; tests, benchmarks and the demo use it):

- :func:`simulate_night` ``(outdir, NightSpec(...)) -> NightTruth``: write a night of CP InstCal
  files (pointed g/r + VR drift exposures) and ``outdir/truth/*.parquet`` (see TRUTH.md).
- :func:`render_ccd` ``(scene, RenderOptions()) -> CcdRender``: one CCD in memory (image, dq,
  truth tables), no files; ``RenderOptions.noiseless()`` and ``.without_events()`` for tests.
- :func:`quick_scene` ``(shape, n_stars, seed, ...) -> (CcdScene, StarCatalogue)``: a complete
  one-CCD scene from a seed (``n_stars=0``: a pure-noise CCD).
- :func:`deliver` ``(pairs, dest, cadence_s, seed, write_seconds)``: replay files as the
  transfer system delivers them.
"""

from driftwatch.simulate.deliver import deliver
from driftwatch.simulate.generate import StarCatalogue, quick_scene
from driftwatch.simulate.night import NightSpec, NightTruth, simulate_night
from driftwatch.simulate.render import CcdRender, render_ccd
from driftwatch.simulate.scene import (
    Atmosphere, Brightening, CcdScene, Flash, RenderOptions, Streak, paczynski_magnification,
)

__all__ = [
    "Atmosphere", "Brightening", "CcdRender", "CcdScene", "Flash", "NightSpec", "NightTruth",
    "RenderOptions", "StarCatalogue", "Streak", "deliver", "paczynski_magnification",
    "quick_scene", "render_ccd", "simulate_night",
]

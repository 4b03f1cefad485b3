"""The reference catalogue of a field: stars measured on pointed g and r images.

Per CCD and band, :func:`measure_sources` detects sources with sep (threshold in units of the
per-pixel noise map), measures windowed centroids, aperture fluxes and magnitudes, and converts
positions to the sky through the CCD's WCS (TPV distortion included). :func:`merge_bands` joins
the two bands with a one-to-one, tolerance-bounded cross-match (mutual nearest neighbours on the
sky within ``match_arcsec``), flags photometric references and gives every star its stable ID.

Stable IDs: ``"<field>-<RA deg, 5 decimals><signed Dec deg, 5 decimals>"`` of the catalogue
position (a 0.036" grid, far below the separation of two resolved stars; a collision gets
``~2``, ``~3`` in magnitude order). The ID is a function of the catalogue alone, and the catalogue
is built once per field and reused, so the same star carries the same ID in every exposure and
every night that uses it.

Magnitudes: ``MAGZPT - 2.5 log10(flux / EXPTIME)`` with the CP ``MAGZPT`` (per second, ADU);
where a header has no MAGZPT the instrumental zero point :data:`FALLBACK_ZP` is used and
``Catalogue.zp_source`` says so for that band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from dataclasses import field as dc_field

import numpy as np
import scipy.ndimage as ndi
import sep
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from driftwatch.errors import ScienceError
from driftwatch.science.background import Background

__all__ = ["BandSources", "Catalogue", "FALLBACK_ZP", "measure_sources", "merge_bands",
           "concat_catalogues", "star_ids", "sky_to_unit"]

#: Zero point used when a header has no MAGZPT: magnitudes are then instrumental.
FALLBACK_ZP = 25.0
_FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
_DEG = math.pi / 180.0

# Crowded CCDs exceed sep's default pixel stack and deblending limits.
sep.set_extract_pixstack(2_000_000)
sep.set_sub_object_limit(4096)


@dataclass(frozen=True)
class BandSources:
    """Sources measured on one pointed CCD image in one band; arrays have shape (n,).

    Attributes
    ----------
    x, y : ndarray, float64
        Windowed centroid, zero-based pixels of that image.
    ra, dec : ndarray, float64
        Sky position, degrees (through the image's WCS, distortion included).
    flux, flux_err : ndarray, float64
        Aperture flux (radius ``2 * fwhm``) and error, ADU per second.
    mag, mag_err : ndarray, float32
        Magnitude with the zero point below (NaN where flux <= 0).
    snr : ndarray, float32
        flux / flux_err.
    peak : ndarray, float32
        Highest sky-subtracted pixel of the source, ADU (after the sky, before the exposure
        time division).
    saturated : ndarray, bool
        Saturated or bleed pixels (DQ 3/4 or >= SATURATE) in the aperture, or sep's flag.
    flags : ndarray, int16
        sep extraction flags OR-ed with aperture flags.
    band : str
    zp : float
        Zero point used (mag of 1 ADU/s).
    zp_source : str
        ``"MAGZPT"`` or ``"fallback"``.
    fwhm_px : float
        FWHM used for windows and apertures.
    """

    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    snr: np.ndarray
    peak: np.ndarray
    saturated: np.ndarray
    flags: np.ndarray
    band: str
    zp: float
    zp_source: str
    fwhm_px: float

    @property
    def n(self) -> int:
        return int(self.x.size)


@dataclass(frozen=True)
class Catalogue:
    """The reference catalogue of one field (or the part of it on some CCDs).

    Every array has shape (n,); magnitudes and colours are NaN where a band has no measurement.

    Attributes
    ----------
    star_id : ndarray of str
        Stable star identifier (see the module docstring).
    ccd : ndarray of str
        CCD of the pointed images the star was measured on.
    ra, dec : ndarray, float64
        Sky position, degrees (mean of the g and r positions where both exist).
    mag_g, mag_r, magerr_g, magerr_r : ndarray, float32
        Magnitudes and errors.
    g_r : ndarray, float32
        g - r colour (NaN unless both bands measured).
    flux_g, flux_r : ndarray, float64
        Aperture fluxes, ADU per second.
    saturated : ndarray, bool
        Saturated in either band.
    reference : ndarray, bool
        Usable as a photometric reference: measured in both bands, unsaturated (below
        ``linear_fraction`` of SATURATE at the peak), S/N >= ``min_snr`` in both bands, clean
        sep flags, and isolated (no other source within the footprint of its drift trail).
    field : str
        Field name the IDs were made with.
    zp_source : dict
        Band -> ``"MAGZPT"`` or ``"fallback"``.
    """

    star_id: np.ndarray
    ccd: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag_g: np.ndarray
    mag_r: np.ndarray
    magerr_g: np.ndarray
    magerr_r: np.ndarray
    g_r: np.ndarray
    flux_g: np.ndarray
    flux_r: np.ndarray
    saturated: np.ndarray
    reference: np.ndarray
    field: str = ""
    zp_source: dict[str, str] = dc_field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.ra.size)

    def __len__(self) -> int:
        return self.n

    #: Names of the per-star array columns, in table order.
    COLUMNS = ("star_id", "ccd", "ra", "dec", "mag_g", "mag_r", "magerr_g", "magerr_r", "g_r",
               "flux_g", "flux_r", "saturated", "reference")

    def take(self, index: np.ndarray) -> Catalogue:
        """Return the stars selected by a boolean mask or an index array."""
        return replace(self, **{c: getattr(self, c)[index] for c in self.COLUMNS})

    @property
    def mag_ref(self) -> np.ndarray:
        """Magnitude used to predict a trail's brightness: r, else g. float32, shape (n,)."""
        return np.where(np.isfinite(self.mag_r), self.mag_r, self.mag_g).astype(np.float32)


def sky_to_unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Return unit vectors, shape (n, 3), of sky positions in degrees."""
    ra = np.asarray(ra, dtype=float) * _DEG
    dec = np.asarray(dec, dtype=float) * _DEG
    cd = np.cos(dec)
    return np.column_stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)])


def _chord(arcsec: float) -> float:
    return 2.0 * math.sin(0.5 * arcsec / 3600.0 * _DEG)


def measure_sources(image: np.ndarray, wcs: WCS, background: Background, *, fwhm_px: float,
                    exptime: float, band: str, mask: np.ndarray | None = None,
                    sat_mask: np.ndarray | None = None, magzpt: float | None = None,
                    gain: float | None = None, threshold_sigma: float = 5.0,
                    min_area: int = 5) -> BandSources:
    """Detect and measure the sources of one pointed CCD image.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixels, ADU, sky kept (any float dtype or byte order).
    wcs : astropy.wcs.WCS
        Celestial WCS of the image (TPV distortion included).
    background : Background
        Sky and noise of the image.
    fwhm_px : float
        PSF FWHM, pixels (centroid window ``sigma = fwhm / 2.355``, aperture radius
        ``2 fwhm``).
    exptime : float
        Exposure time, s (fluxes are per second).
    band : str
        Band name, recorded.
    mask, sat_mask : ndarray of bool, shape (ny, nx), optional
        Unusable pixels (ignored by detection and photometry), and the saturated/bleed subset.
    magzpt : float, optional
        CP zero point (magnitude of 1 ADU/s); :data:`FALLBACK_ZP` when None.
    gain : float, optional
        e-/ADU, adds the source Poisson noise to the errors.
    threshold_sigma : float
        Detection threshold: S/N per pixel of the PSF-matched filtered image.
    min_area : int
        Minimum connected pixels above the threshold.

    Returns
    -------
    BandSources

    Raises
    ------
    ScienceError
        Bad exposure time or FWHM, or sep failing on the image.
    """
    if not (exptime > 0):
        raise ScienceError(f"exposure time must be positive, got {exptime}")
    if not (fwhm_px and fwhm_px > 0 and math.isfinite(fwhm_px)):
        raise ScienceError(f"PSF FWHM must be positive, got {fwhm_px}")
    # A native-byte-order float32 copy for sep (FITS data are big-endian).
    sub = np.array(image, dtype=np.float32, order="C", copy=True)
    background.apply(sub, "back", "sub")
    bad = ~np.isfinite(sub)
    if mask is not None:
        bad |= mask
    if bad.any():
        sub[bad] = 0.0
    bad = np.ascontiguousarray(bad)
    # Detection on the PSF-matched S/N image, sum(k * d) / (rms * sqrt(sum(k^2))), computed with
    # two 1-D passes; sep's own matched filter with a noise array does the same 2-D arithmetic
    # ~5x slower. sep then only segments and deblends above ``threshold_sigma``. For a PSF of
    # FWHM >= 3 px the image is first binned 2 x 2 (the S/N of a point source is unchanged to
    # a few %, the work drops 4x); positions are then measured on the full image.
    ny, nx = sub.shape
    binned = (fwhm_px >= 3.0 and background.step == 2 and ny % 2 == 0 and nx % 2 == 0)
    if binned:
        # Strided slices: numpy's reductions over small inner axes are ~10x slower.
        det_img = sub[0::2, 0::2] + sub[1::2, 0::2]
        det_img += sub[0::2, 1::2]
        det_img += sub[1::2, 1::2]
        det_bad = bad[0::2, 0::2] | bad[1::2, 0::2] | bad[0::2, 1::2] | bad[1::2, 1::2]
        det_rms = 2.0 * background.rms                      # noise of a 4-pixel sum
        sigma = math.sqrt((fwhm_px * _FWHM_TO_SIGMA / 2.0) ** 2 + 1.0 / 12.0)
        area = max(2, int(math.ceil(min_area / 4.0)) + 1)
    else:
        det_img, det_bad = sub, bad
        det_rms = None
        sigma = fwhm_px * _FWHM_TO_SIGMA
        area = min_area
    h = max(1, int(math.ceil(2.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-h, h + 1) / sigma) ** 2).astype(np.float32)
    snr_img = ndi.correlate1d(det_img, taps, axis=1, mode="constant")
    ndi.correlate1d(snr_img, taps, axis=0, mode="constant", output=snr_img)
    if det_rms is not None:
        snr_img /= det_rms
    else:
        background.apply(snr_img, "rms", "div")
    snr_img *= np.float32(1.0 / float(np.sum(taps.astype(np.float64) ** 2)))
    try:
        obj = sep.extract(snr_img, threshold_sigma, mask=det_bad, minarea=area,
                          filter_kernel=None, deblend_cont=0.005, clean=True)
    except Exception as exc:  # sep reports overflows and allocation failures this way
        raise ScienceError(f"source extraction failed ({band}): {exc}") from exc
    del snr_img
    if binned and len(obj):
        obj = obj.copy()
        obj["x"] = 2.0 * obj["x"] + 0.5
        obj["y"] = 2.0 * obj["y"] + 0.5
    n = len(obj)
    if n:
        sig = np.full(n, fwhm_px * _FWHM_TO_SIGMA)
        xw, yw, wflag = sep.winpos(sub, obj["x"], obj["y"], sig, mask=bad)
        # A window centroid that ran away (blend, edge) falls back to the barycentre.
        off = (np.hypot(xw - obj["x"], yw - obj["y"]) > fwhm_px) | (wflag != 0)
        x = np.where(off, obj["x"], xw)
        y = np.where(off, obj["y"], yw)
        r_ap = 2.0 * fwhm_px
        flux, _, aflag = sep.sum_circle(sub, x, y, r_ap, mask=bad)
        # Errors: sky + read noise from the local noise map, plus the source's Poisson noise.
        var = math.pi * r_ap**2 * background.rms_at(x, y).astype(float) ** 2
        if gain:
            var = var + np.clip(flux, 0.0, None) / gain
        ferr = np.sqrt(var)
        sat = np.zeros(n, dtype=bool)
        if sat_mask is not None:
            _, _, sflag = sep.sum_circle(sub, x, y, r_ap,
                                         mask=np.ascontiguousarray(sat_mask, dtype=bool))
            sat = (sflag & sep.APER_HASMASKED) != 0
        flags = (obj["flag"].astype(np.int32) | aflag.astype(np.int32)
                 | np.where(off, 0x100, 0)).astype(np.int16)
        ra, dec = wcs.all_pix2world(x, y, 0)
        # Highest unfiltered pixel in the 3x3 box around the centroid.
        ix = np.clip(np.rint(x).astype(np.intp), 1, nx - 2)
        iy = np.clip(np.rint(y).astype(np.intp), 1, ny - 2)
        peak = np.max(np.stack([sub[iy + dy, ix + dx] for dy in (-1, 0, 1)
                                for dx in (-1, 0, 1)]), axis=0).astype(np.float32)
    else:
        x = y = ra = dec = flux = ferr = np.zeros(0)
        sat = np.zeros(0, dtype=bool)
        flags = np.zeros(0, dtype=np.int16)
        peak = np.zeros(0, dtype=np.float32)
    zp_source = "MAGZPT" if magzpt is not None and math.isfinite(magzpt) else "fallback"
    zp = float(magzpt) if zp_source == "MAGZPT" else FALLBACK_ZP
    flux = np.asarray(flux, dtype=float) / exptime
    ferr = np.asarray(ferr, dtype=float) / exptime
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = flux > 0
        mag = np.where(pos, zp - 2.5 * np.log10(np.where(pos, flux, 1.0)), np.nan)
        mag_err = np.where(pos, 1.0857362047581294 * ferr / np.where(pos, flux, 1.0), np.nan)
        snr = np.where(ferr > 0, flux / np.where(ferr > 0, ferr, 1.0), 0.0)
    return BandSources(x=np.asarray(x, float), y=np.asarray(y, float), ra=np.asarray(ra, float),
                       dec=np.asarray(dec, float), flux=flux, flux_err=ferr,
                       mag=mag.astype(np.float32), mag_err=mag_err.astype(np.float32),
                       snr=snr.astype(np.float32), peak=peak, saturated=np.asarray(sat, bool),
                       flags=flags, band=band, zp=zp, zp_source=zp_source, fwhm_px=float(fwhm_px))


def _mutual_nearest(ua: np.ndarray, ub: np.ndarray, max_chord: float) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Return index pairs (ia, ib) of mutual nearest neighbours closer than ``max_chord``."""
    if len(ua) == 0 or len(ub) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    da, ia = cKDTree(ub).query(ua, distance_upper_bound=max_chord)
    db, ib = cKDTree(ua).query(ub, distance_upper_bound=max_chord)
    a = np.flatnonzero(np.isfinite(da))
    b = ia[a]
    mutual = ib[b] == a
    return a[mutual], b[mutual]


def star_ids(field_name: str, ra: np.ndarray, dec: np.ndarray,
             order_key: np.ndarray | None = None) -> np.ndarray:
    """Return stable star IDs ``<field>-<ra><dec>`` (5 decimals of a degree).

    Parameters
    ----------
    field_name : str
        Field name (prefix).
    ra, dec : ndarray, shape (n,)
        Degrees.
    order_key : ndarray, shape (n,), optional
        Decides which star of a colliding pair gets the plain ID (smallest first, e.g. mag).

    Returns
    -------
    ndarray of str, shape (n,)
    """
    ra = np.mod(np.asarray(ra, dtype=float), 360.0)
    dec = np.asarray(dec, dtype=float)
    base = np.array([f"{field_name}-{r:09.5f}{d:+09.5f}" for r, d in zip(ra, dec)], dtype=object)
    if base.size == 0:
        return base.astype(str)
    key = np.zeros(base.size) if order_key is None else np.nan_to_num(order_key, nan=99.0)
    order = np.lexsort((key, base))
    sorted_ids = base[order]
    first = np.ones(base.size, dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    if not first.all():
        group_start = np.maximum.accumulate(np.where(first, np.arange(base.size), 0))
        rank = np.arange(base.size) - group_start
        sorted_ids = np.array([s if k == 0 else f"{s}~{k + 1}" for s, k in zip(sorted_ids, rank)],
                              dtype=object)
        base = np.empty_like(base)
        base[order] = sorted_ids
    return base.astype(str)


def merge_bands(g: BandSources, r: BandSources, *, ccd: str, field_name: str,
                match_arcsec: float = 1.0, saturate_adu: float | None = None,
                linear_fraction: float = 0.5, min_snr: float = 30.0,
                isolation_along_arcsec: float = 12.0,
                isolation_across_arcsec: float = 3.0) -> Catalogue:
    """Join the g and r sources of one CCD into catalogue stars with IDs and reference flags.

    Parameters
    ----------
    g, r : BandSources
        The two bands' measurements of the same CCD.
    ccd : str
        CCD name recorded for every star.
    field_name : str
        Field name, the prefix of the IDs.
    match_arcsec : float
        Largest g-r separation of one star; unmatched sources stay, with one band NaN.
    saturate_adu : float, optional
        SATURATE of the images; a reference star's peak stays below
        ``linear_fraction * saturate_adu`` (DECam is linear to 1% below ~50% of saturation).
    min_snr : float
        Minimum S/N in both bands of a reference star.
    isolation_along_arcsec, isolation_across_arcsec : float
        A reference star has no other catalogue source within this box, along Declination (the
        drift direction: trail length plus the PSF) and along RA.

    Returns
    -------
    Catalogue
    """
    ug, ur = sky_to_unit(g.ra, g.dec), sky_to_unit(r.ra, r.dec)
    ig, ir = _mutual_nearest(ug, ur, _chord(match_arcsec))
    g_only = np.setdiff1d(np.arange(g.n), ig)
    r_only = np.setdiff1d(np.arange(r.n), ir)
    n = ig.size + g_only.size + r_only.size
    nan32 = np.float32(np.nan)

    def col(values_g, values_r, fill, dtype):
        out_g = np.full(n, fill, dtype=dtype)
        out_r = np.full(n, fill, dtype=dtype)
        out_g[: ig.size] = values_g[ig]
        out_g[ig.size: ig.size + g_only.size] = values_g[g_only]
        out_r[: ig.size] = values_r[ir]
        out_r[ig.size + g_only.size:] = values_r[r_only]
        return out_g, out_r

    mag_g, mag_r = col(g.mag, r.mag, nan32, np.float32)
    err_g, err_r = col(g.mag_err, r.mag_err, nan32, np.float32)
    flux_g, flux_r = col(g.flux, r.flux, np.nan, np.float64)
    snr_g, snr_r = col(g.snr, r.snr, 0.0, np.float32)
    peak_g, peak_r = col(g.peak, r.peak, 0.0, np.float32)
    sat_g, sat_r = col(g.saturated, r.saturated, False, bool)
    flag_g, flag_r = col(g.flags, r.flags, 0, np.int16)
    # Position: mean unit vector of the bands that measured the star.
    u = np.zeros((n, 3))
    u[: ig.size] = ug[ig] + ur[ir]
    u[ig.size: ig.size + g_only.size] = ug[g_only]
    u[ig.size + g_only.size:] = ur[r_only]
    u /= np.linalg.norm(u, axis=1, keepdims=True) if n else 1.0
    ra = np.mod(np.degrees(np.arctan2(u[:, 1], u[:, 0])), 360.0)
    dec = np.degrees(np.arcsin(np.clip(u[:, 2], -1.0, 1.0)))
    saturated = sat_g | sat_r
    both = np.zeros(n, dtype=bool)
    both[: ig.size] = True
    ok = both & ~saturated & (flag_g == 0) & (flag_r == 0)
    ok &= (snr_g >= min_snr) & (snr_r >= min_snr)
    if saturate_adu is not None and math.isfinite(saturate_adu):
        ok &= (peak_g < linear_fraction * saturate_adu) & (peak_r < linear_fraction * saturate_adu)
    isolated = _isolated(ra, dec, isolation_along_arcsec, isolation_across_arcsec)
    reference = ok & isolated
    g_r = (mag_g - mag_r).astype(np.float32)
    ids = star_ids(field_name, ra, dec, order_key=np.where(np.isfinite(mag_r), mag_r, mag_g))
    order = np.argsort(ids, kind="stable")
    cat = Catalogue(star_id=ids, ccd=np.full(n, ccd, dtype=object).astype(str), ra=ra, dec=dec,
                    mag_g=mag_g, mag_r=mag_r, magerr_g=err_g, magerr_r=err_r, g_r=g_r,
                    flux_g=flux_g, flux_r=flux_r, saturated=saturated, reference=reference,
                    field=field_name, zp_source={"g": g.zp_source, "r": r.zp_source})
    return cat.take(order)


def _isolated(ra: np.ndarray, dec: np.ndarray, along_arcsec: float,
              across_arcsec: float) -> np.ndarray:
    """True for stars with no neighbour inside a Dec x RA box (arcsec half-widths)."""
    n = ra.size
    iso = np.ones(n, dtype=bool)
    if n < 2:
        return iso
    dec0 = float(np.median(dec))
    x = (((ra - np.median(ra) + 180.0) % 360.0) - 180.0) * math.cos(dec0 * _DEG) * 3600.0
    y = (dec - dec0) * 3600.0
    pts = np.column_stack([x / across_arcsec, y / along_arcsec])
    pairs = cKDTree(pts).query_pairs(r=math.sqrt(2.0), output_type="ndarray")
    if pairs.size:
        d = np.abs(pts[pairs[:, 0]] - pts[pairs[:, 1]])
        close = (d[:, 0] < 1.0) & (d[:, 1] < 1.0)
        iso[pairs[close, 0]] = False
        iso[pairs[close, 1]] = False
    return iso


def concat_catalogues(parts: list[Catalogue], field_name: str) -> Catalogue:
    """Join per-CCD catalogues of one field; IDs made unique across CCDs, sorted by ID."""
    parts = [p for p in parts if p.n]
    if not parts:
        empty = np.zeros(0)
        return Catalogue(star_id=empty.astype(str), ccd=empty.astype(str), ra=empty, dec=empty,
                         mag_g=empty.astype(np.float32), mag_r=empty.astype(np.float32),
                         magerr_g=empty.astype(np.float32), magerr_r=empty.astype(np.float32),
                         g_r=empty.astype(np.float32), flux_g=empty, flux_r=empty,
                         saturated=empty.astype(bool), reference=empty.astype(bool),
                         field=field_name)
    cols = {c: np.concatenate([getattr(p, c) for p in parts]) for c in Catalogue.COLUMNS}
    mag = np.where(np.isfinite(cols["mag_r"]), cols["mag_r"], cols["mag_g"])
    cols["star_id"] = star_ids(field_name, cols["ra"], cols["dec"], order_key=mag)
    zp: dict[str, str] = {}
    for p in parts:
        for band, src in p.zp_source.items():
            zp[band] = src if zp.get(band, src) == src else "mixed"
    cat = Catalogue(field=field_name, zp_source=zp, **cols)
    return cat.take(np.argsort(cat.star_id, kind="stable"))

"""ToyVOS rendering: periodic textures, star-shaped masks and an inverse-mapping layer renderer.

A scene is a stack of :class:`Layer` objects painted back to front. Every layer has a texture in its own canonical
coordinates (pixel units, sampled bilinearly with wrap-around, so textures are periodic) and, except the background,
a star-shaped mask ``rho <= radius(theta)`` in the same coordinates, evaluated analytically per pixel so that labels
are crisp. A per-frame 2x3 affine maps canonical coordinates to image coordinates (camera composed with the layer's
own motion); each pixel is pulled back through its inverse.

Image coordinates: pixel (row i, column j) has its centre at x = j, y = i. Affines act on column vectors (x, y, 1).
Ground-truth forward flow of a pixel p at frame t is ``M_{t+1}(M_t^{-1}(p)) - p`` for the layer on top at p, exact
even where that surface is hidden or out of view at t+1.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "Layer",
    "RenderedVideo",
    "TEXTURE_KINDS",
    "SHAPE_FAMILIES",
    "make_texture",
    "make_shape",
    "shape_radii",
    "compose",
    "invert",
    "render_video",
]

TEXTURE_KINDS: tuple[str, ...] = ("noise", "stripes", "checker", "spots", "gradient", "marble")
SHAPE_FAMILIES: tuple[str, ...] = ("ellipse", "polygon", "star", "blob")
_ANGLES = 1024  # samples of the radial function over [-pi, pi)


@dataclass(frozen=True)
class Layer:
    """One paintable layer.

    texture: (S, S', 3) float32 in 0..255, periodic (sampled with wrap-around) in canonical pixel units.
    radii: (1024,) float64 radial function of a star-shaped mask sampled at angles ``-pi + 2 pi k / 1024``
        (canonical units), or None for a layer that covers the whole plane (the background).
    affines: (T, 2, 3) float64, canonical -> image coordinates per frame.
    label: object id written to the label map where this layer is on top (0 for background and distractors).
    """

    texture: np.ndarray
    radii: np.ndarray | None
    affines: np.ndarray
    label: int = 0


@dataclass(frozen=True)
class RenderedVideo:
    """Output of :func:`render_video` for T frames of size (H, W) and L layers (layer 0 = bottom).

    frames: (T, H, W, 3) uint8. labels: (T, H, W) uint8. top: (T, H, W) int16 index of the layer on top.
    flow: (T - 1, H, W, 2) float32 forward flow t -> t+1, channel 0 = dx (columns), channel 1 = dy (rows).
    visible_area: (T, L) int64 pixels where the layer is on top.
    in_view_area: (T, L) int64 pixels of the image the layer's mask covers, occluded or not (H*W for a full layer).
    """

    frames: np.ndarray
    labels: np.ndarray
    top: np.ndarray
    flow: np.ndarray
    visible_area: np.ndarray
    in_view_area: np.ndarray


# ----------------------------------------------------------------------------------------------------- affine algebra
def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine ``outer o inner`` (apply ``inner`` first). Both (..., 2, 3); returns (..., 2, 3)."""
    linear = outer[..., :, :2] @ inner[..., :, :2]
    shift = (outer[..., :, :2] @ inner[..., :, 2:])[..., 0] + outer[..., :, 2]
    return np.concatenate([linear, shift[..., None]], axis=-1)


def invert(affine: np.ndarray) -> np.ndarray:
    """Inverse of a (..., 2, 3) affine (raises numpy's LinAlgError if singular)."""
    linear = np.linalg.inv(affine[..., :, :2])
    shift = -(linear @ affine[..., :, 2:])[..., 0]
    return np.concatenate([linear, shift[..., None]], axis=-1)


def _apply(affine: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (
        affine[0, 0] * x + affine[0, 1] * y + affine[0, 2],
        affine[1, 0] * x + affine[1, 1] * y + affine[1, 2],
    )


# ----------------------------------------------------------------------------------------------------------- textures
def _colour(rng: np.random.Generator, *, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*saturation), rng.uniform(*value))
    return np.asarray(rgb, dtype=np.float64) * 255.0


def _normalise(field: np.ndarray) -> np.ndarray:
    low, high = field.min(), field.max()
    return (field - low) / max(high - low, 1e-9)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    return _normalise(gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap"))


def make_texture(rng: np.random.Generator, kind: str, *, size: int, muted: bool = False) -> np.ndarray:
    """A periodic (size, size, 3) float32 texture in 0..255 of the given ``kind`` (one of ``TEXTURE_KINDS``).

    A scalar field in [0, 1] (wave vectors are integers so every kind tiles seamlessly) is mapped between two or three
    random colours, plus a little grain. ``muted`` picks less saturated, darker colours (used for backgrounds).
    """
    if kind not in TEXTURE_KINDS:
        raise ValueError(f"texture kind {kind!r} is not one of {list(TEXTURE_KINDS)}")
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) * (2.0 * np.pi / size)

    def wave(low: int, high: int) -> np.ndarray:
        kx, ky = 0, 0
        while kx == 0 and ky == 0:
            kx, ky = rng.integers(-high, high + 1, size=2)
            if max(abs(kx), abs(ky)) < low:
                kx, ky = 0, 0
        return kx * x + ky * y + rng.uniform(0.0, 2.0 * np.pi)

    if kind == "noise":
        field = _smooth_noise(rng, size, rng.uniform(size / 48, size / 10))
    elif kind == "stripes":
        gain = rng.uniform(0.6, 4.0)
        field = np.clip(0.5 + gain * np.sin(wave(2, 8)), 0.0, 1.0)
    elif kind == "checker":
        k = rng.integers(2, 7)
        shift = rng.uniform(0.0, 2.0 * np.pi, size=2)
        field = (np.sin(k * x + shift[0]) * np.sin(k * y + shift[1]) > 0).astype(np.float64)
    elif kind == "spots":
        impulses = (rng.random((size, size)) < rng.uniform(0.002, 0.01)).astype(np.float64)
        blurred = gaussian_filter(impulses, rng.uniform(size / 40, size / 18), mode="wrap")
        field = np.clip(blurred / max(blurred.max(), 1e-9) * 2.0, 0.0, 1.0)
    elif kind == "gradient":
        base = 0.5 + 0.5 * np.cos(wave(1, 1))
        field = _normalise(base + 0.25 * _smooth_noise(rng, size, size / 16))
    else:  # marble
        field = 0.5 + 0.5 * np.sin(wave(1, 3) + rng.uniform(2.0, 6.0) * _smooth_noise(rng, size, size / 14))
    saturation, value = ((0.15, 0.6), (0.25, 0.8)) if muted else ((0.35, 1.0), (0.45, 1.0))
    colours = [_colour(rng, saturation=saturation, value=value) for _ in range(int(rng.integers(2, 4)))]
    stops = np.linspace(0.0, 1.0, len(colours))
    rgb = np.stack([np.interp(field, stops, [c[channel] for c in colours]) for channel in range(3)], axis=-1)
    rgb += rng.normal(0.0, rng.uniform(1.0, 8.0), size=rgb.shape)
    return np.clip(rgb, 0.0, 255.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------- shapes
def shape_radii(vertices: np.ndarray) -> np.ndarray:
    """Radial function of a star-shaped polygon around the origin, sampled on the ``_ANGLES`` grid.

    vertices: (n, 2) float (x, y), ordered by strictly increasing angle in (-pi, pi], gaps below pi.
    Returns (1024,) float64: distance from the origin to the boundary along each sample direction.
    """
    angles = np.arctan2(vertices[:, 1], vertices[:, 0])
    order = np.argsort(angles)
    vertices, angles = vertices[order], angles[order]
    grid = -np.pi + 2.0 * np.pi * np.arange(_ANGLES) / _ANGLES
    # segment i joins vertex i and vertex i+1 (cyclic); a direction belongs to the segment whose start angle precedes it
    index = (np.searchsorted(angles, grid, side="right") - 1) % len(angles)
    start, end = vertices[index], vertices[(index + 1) % len(vertices)]
    edge = end - start
    direction = np.stack([np.cos(grid), np.sin(grid)], axis=-1)
    cross_start = start[:, 0] * edge[:, 1] - start[:, 1] * edge[:, 0]
    cross_dir = direction[:, 0] * edge[:, 1] - direction[:, 1] * edge[:, 0]
    return cross_start / cross_dir


def make_shape(rng: np.random.Generator, family: str, *, radius: float) -> np.ndarray:
    """Radial function (1024,) float64 of a random star-shaped mask of the given family, largest radius ~``radius``.

    ellipse: axes ``radius`` and 0.45..1 of it; polygon: 3..7 jittered vertices; star: 5..7 points, inner radius
    0.4..0.65; blob: 1 + a sum of low harmonics (2..5) with total amplitude <= 0.4, scaled to peak at ``radius``.
    """
    grid = -np.pi + 2.0 * np.pi * np.arange(_ANGLES) / _ANGLES
    if family == "ellipse":
        a, b = radius, radius * rng.uniform(0.45, 1.0)
        return a * b / np.sqrt((b * np.cos(grid)) ** 2 + (a * np.sin(grid)) ** 2)
    if family in ("polygon", "star"):
        if family == "polygon":
            count = int(rng.integers(3, 8))
            radii = radius * rng.uniform(0.75, 1.0, size=count)
            jitter = 0.3
        else:
            count = 2 * int(rng.integers(5, 8))
            radii = radius * np.where(np.arange(count) % 2 == 0, 1.0, rng.uniform(0.4, 0.65))
            jitter = 0.1
        step = 2.0 * np.pi / count
        angles = -np.pi + step * (np.arange(count) + rng.uniform(-jitter, jitter, size=count)) + rng.uniform(0, step)
        return shape_radii(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1))
    if family == "blob":
        harmonics = np.arange(2, 6)
        amplitudes = rng.dirichlet(np.ones(len(harmonics))) * rng.uniform(0.15, 0.4)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=len(harmonics))
        profile = 1.0 + (amplitudes[:, None] * np.cos(harmonics[:, None] * grid + phases[:, None])).sum(axis=0)
        return radius * profile / profile.max()
    raise ValueError(f"shape family {family!r} is not one of {list(SHAPE_FAMILIES)}")


# ----------------------------------------------------------------------------------------------------------- sampling
def _wrap(index: np.ndarray, period: int) -> np.ndarray:
    """``index mod period`` for int64 arrays (a bit mask when ``period`` is a power of two, much faster)."""
    return index & (period - 1) if period & (period - 1) == 0 else index % period


def _sample_bilinear(planes: np.ndarray, shape: tuple[int, int], u: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    """Bilinear, wrap-around lookup at canonical points (u = x, v = y), both (N,) float64.

    planes: (3, S * S') float32, the channels of an (S, S') texture flattened row-major. Returns 3 arrays (N,) float32.
    (Planar 1-D gathers are several times faster than gathering (N, 3) rows and broadcasting the weights.)
    """
    height, width = shape
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    x0, y0 = u0.astype(np.int64), v0.astype(np.int64)
    x1 = _wrap(x0 + 1, width)
    x0 = _wrap(x0, width)
    y1 = _wrap(y0 + 1, height) * width
    y0 = _wrap(y0, height) * width
    i00, i01, i10, i11 = y0 + x0, y0 + x1, y1 + x0, y1 + x1
    channels = []
    for plane in planes:
        a, b, c, d = plane.take(i00), plane.take(i01), plane.take(i10), plane.take(i11)
        b -= a
        b *= fu
        a += b  # top row
        d -= c
        d *= fu
        c += d  # bottom row
        c -= a
        c *= fv
        a += c
        channels.append(a)
    return channels


def _inside(radii: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of canonical points (u, v) inside the star-shaped mask (linear interpolation of ``radii``)."""
    position = (np.arctan2(v, u) + np.pi) * (_ANGLES / (2.0 * np.pi))
    index = np.floor(position)
    frac = position - index
    index = index.astype(np.int64) % _ANGLES
    bound = radii[index] * (1.0 - frac) + radii[(index + 1) % _ANGLES] * frac
    return u * u + v * v <= bound * bound


def _footprint(layer: Layer, t: int, height: int, width: int) -> tuple[int, int, int, int] | None:
    """Rows y0:y1 and columns x0:x1 of the image the layer may cover at frame ``t`` (None if it cannot be in view)."""
    if layer.radii is None:
        return 0, height, 0, width
    affine = layer.affines[t]
    reach = float(layer.radii.max()) * float(np.linalg.norm(affine[:, :2], ord=2)) + 1.0
    cx, cy = affine[0, 2], affine[1, 2]
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, width)
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def render_video(
    layers: list[Layer], *, size: tuple[int, int], frames: int | None = None, start: int = 0
) -> RenderedVideo:
    """Paint ``layers`` (bottom first; layer 0 should cover the plane) for every frame, with labels and flow.

    Each pixel takes the texture of the topmost layer whose mask contains its pre-image; labels are that layer's
    ``label``. ``frames`` renders only the first ``frames`` frames (flow then has ``frames - 1`` entries);
    ``start`` skips the frames before it (every output then begins at frame ``start``: ``frames - start`` frames and
    ``frames - start - 1`` flows). Each frame depends only on the layers, so a range equals that slice of the whole.
    """
    height, width = size
    total = layers[0].affines.shape[0]
    end = total if frames is None else frames
    if not 0 <= start < end <= total:
        raise ValueError(f"render_video: need 0 <= start < frames <= {total}, got start={start}, frames={frames}")
    count = end - start
    planes = [np.ascontiguousarray(np.moveaxis(layer.texture, -1, 0).reshape(3, -1)) for layer in layers]
    out_frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    out_top = np.zeros((count, height, width), dtype=np.int16)
    out_flow = np.zeros((max(count - 1, 0), height, width, 2), dtype=np.float32)
    visible = np.zeros((count, len(layers)), dtype=np.int64)
    in_view = np.zeros((count, len(layers)), dtype=np.int64)
    label_of = np.asarray([layer.label for layer in layers], dtype=np.uint8)
    for t in range(count):
        frame = start + t
        canvas = np.zeros((3, height * width), dtype=np.float32)  # planar, pixels flattened row-major
        top = out_top[t].reshape(-1)
        flow = np.zeros((2, height * width), dtype=np.float64)
        for index, layer in enumerate(layers):
            window = _footprint(layer, frame, height, width)
            if window is None:
                continue
            y0, y1, x0, x1 = window
            y, x = (grid.ravel() for grid in np.mgrid[y0:y1, x0:x1].astype(np.float64))
            inverse = invert(layer.affines[frame])
            u, v = _apply(inverse, x, y)
            if layer.radii is not None:
                mask = _inside(layer.radii, u, v)
                x, y, u, v = x[mask], y[mask], u[mask], v[mask]
            in_view[t, index] = x.size
            if not x.size:
                continue
            if x.size == height * width:  # the whole image, in row-major order: plain slices beat scattering
                pixels: slice | np.ndarray = slice(None)
            else:
                pixels = y.astype(np.int64) * width + x.astype(np.int64)
            for channel, values in enumerate(_sample_bilinear(planes[index], layer.texture.shape[:2], u, v)):
                canvas[channel, pixels] = values
            top[pixels] = index
            if t < count - 1:
                # forward flow: where this surface point lands at t+1, minus where it is now
                nx, ny = _apply(compose(layer.affines[frame + 1], inverse), x, y)
                flow[0, pixels] = nx - x
                flow[1, pixels] = ny - y
        out_frames[t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8).T.reshape(height, width, 3)
        if t < count - 1:
            out_flow[t] = flow.T.reshape(height, width, 2)
        visible[t] = np.bincount(top, minlength=len(layers))
    return RenderedVideo(
        frames=out_frames,
        labels=label_of[out_top],
        top=out_top,
        flow=out_flow,
        visible_area=visible,
        in_view_area=in_view,
    )

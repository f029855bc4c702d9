"""ToyVOS: a procedural video object segmentation dataset written in the DAVIS 2017 layout, so that every voszoo
command runs on a fresh machine with no download.

Each video has a textured background and 1-4 annotated, textured objects (ellipses, polygons, stars, blobs) under
smooth affine motion (translation, scale, rotation with random acceleration), unannotated look-alike distractors
(same texture and shape family as a target), occlusions by a per-video z-order (some layers are routed through a
target), objects that leave the view and come back, and camera pan/zoom applied to everything. Ground-truth forward
flow is exact (see :mod:`voszoo.data.toy_render`). Layout, flow convention and timings: docs/toyvos.md.

Every video's random generator is derived from ``(seed, video index)`` with :class:`numpy.random.SeedSequence`, and
files carry no time-dependent metadata, so the same arguments give byte-identical files whatever ``workers`` is.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import multiprocessing
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from voszoo.data.io import VOSDataError, write_labels
from voszoo.data.toy_render import (
    SHAPE_FAMILIES,
    TEXTURE_KINDS,
    Layer,
    RenderedVideo,
    compose,
    make_shape,
    make_texture,
    render_video,
)
from voszoo.errors import add_verbose_flag, request_full_errors, run_command
from voszoo.fileio import FileLock

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "JPEG_QUALITY",
    "LOCK_TIMEOUT",
    "generate_toyvos",
    "sample_video",
    "render_toyvos_video",
    "main",
]

FORMAT_VERSION = 1
"""Bumped whenever the same parameters would produce different files."""
JPEG_QUALITY = 90
MIN_FIRST_FRAME_AREA = 0.01
"""Every annotated object covers at least this fraction of the image, unoccluded, in frame 0."""
LOCK_TIMEOUT = 3600.0
"""Seconds a run waits for another run generating into the same folder."""
_CAMERA_MODES = ("static", "pan", "zoom", "pan_zoom")
_MAX_ATTEMPTS = 200


# ------------------------------------------------------------------------------------------------------ scene sampling
def _camera(rng: np.random.Generator, *, frames: int, size: tuple[int, int], unit: float) -> tuple[np.ndarray, str]:
    """World -> image affines (T, 2, 3) of a camera that pans (translation) and/or zooms about the image centre.

    World coordinates equal image coordinates at frame 0.
    """
    height, width = size
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    mode = str(rng.choice(_CAMERA_MODES, p=[0.2, 0.35, 0.15, 0.3]))
    look = np.zeros((frames, 2))
    log_zoom = np.zeros(frames)
    velocity = rng.normal(size=2)
    velocity *= rng.uniform(0.6, 2.2) * unit / np.linalg.norm(velocity)
    rate = rng.uniform(0.008, 0.025) * rng.choice([-1.0, 1.0])
    for t in range(1, frames):
        if "pan" in mode:
            velocity = velocity + rng.normal(0.0, 0.15 * unit, size=2)
            look[t] = look[t - 1] + velocity
        if "zoom" in mode:
            rate += rng.normal(0.0, 0.003)
            if not np.log(0.75) < log_zoom[t - 1] + rate < np.log(1.4):
                rate = -rate
            log_zoom[t] = log_zoom[t - 1] + rate
    look += centre
    zoom = np.exp(log_zoom)
    affines = np.zeros((frames, 2, 3))
    affines[:, 0, 0] = affines[:, 1, 1] = zoom
    affines[:, :, 2] = centre - zoom[:, None] * look
    return affines, mode


def _view_boxes(camera: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """World-space (T, 2) lower and upper (x, y) corners of the region each camera frame sees."""
    height, width = size
    zoom = camera[:, 0, 0]
    low = -camera[:, :, 2] / zoom[:, None] - 0.5 / zoom[:, None]
    high = low + np.array([width, height]) / zoom[:, None]
    return low, high


def _wander(
    rng: np.random.Generator, *, start: np.ndarray, camera: np.ndarray, size: tuple[int, int], unit: float
) -> np.ndarray:
    """Smooth world positions (T, 2): constant velocity plus random acceleration, pulled back towards the inner 70% of
    the camera's view whenever they drift outside it."""
    frames = camera.shape[0]
    low, high = _view_boxes(camera, size)
    margin = 0.15 * (high - low)
    positions = np.zeros((frames, 2))
    positions[0] = start
    velocity = rng.normal(size=2)
    velocity *= rng.uniform(0.4, 2.5) * unit / np.linalg.norm(velocity)
    for t in range(1, frames):
        inner_low, inner_high = low[t] + margin[t], high[t] - margin[t]
        pull = np.clip(inner_low - positions[t - 1], 0, None) - np.clip(positions[t - 1] - inner_high, 0, None)
        velocity = velocity + rng.normal(0.0, 0.2 * unit, size=2) + 0.05 * pull
        speed = np.linalg.norm(velocity)
        if speed > 4.0 * unit:
            velocity *= 4.0 * unit / speed
        positions[t] = positions[t - 1] + velocity
    return positions


def _scale_rotation(rng: np.random.Generator, *, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth per-frame scale (T,) starting at 1 and staying in [0.7, 1.4], and rotation angle (T,) in radians."""
    log_scale = np.zeros(frames)
    angle = np.full(frames, rng.uniform(0.0, 2.0 * np.pi))
    rate, spin = rng.uniform(-0.02, 0.02), rng.uniform(-0.08, 0.08)
    for t in range(1, frames):
        rate += rng.normal(0.0, 0.004)
        if not np.log(0.7) < log_scale[t - 1] + rate < np.log(1.4):
            rate = -rate
        log_scale[t] = log_scale[t - 1] + rate
        spin += rng.normal(0.0, 0.01)
        angle[t] = angle[t - 1] + spin
    return np.exp(log_scale), angle


def _poses(positions: np.ndarray, scales: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Canonical -> world affines (T, 2, 3): rotate by ``angles``, scale by ``scales``, then move to ``positions``."""
    cos, sin = np.cos(angles) * scales, np.sin(angles) * scales
    return np.stack([np.stack([cos, -sin, positions[:, 0]], -1), np.stack([sin, cos, positions[:, 1]], -1)], 1)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _excursion(
    rng: np.random.Generator, *, positions: np.ndarray, reach: np.ndarray, camera: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Add to ``positions`` (T, 2) a detour that takes the object fully out of view and brings it back.

    reach: (T,) world-space radius of the object. The detour rises smoothly over ``ramp`` frames, holds at least one
    frame with the whole object beyond the nearest image border, returns over ``ramp`` frames and ends >= 1 frame
    before the last frame. Returns the new (T, 2) positions.
    """
    frames = len(positions)
    ramp = max(1, int(round(frames * rng.uniform(0.1, 0.2))))
    hold = max(1, int(round(frames * rng.uniform(0.08, 0.2))))
    latest_start = frames - 2 - (2 * ramp + hold)
    start = int(rng.integers(1, latest_start + 1)) if latest_start >= 1 else 1
    held = np.arange(start + ramp, start + ramp + hold)
    low, high = _view_boxes(camera, size)
    here = positions[held[0]]
    # nearest border of the view at the start of the hold: axis (0 = x, 1 = y) and sign
    gaps = np.array([here[0] - low[held[0], 0], high[held[0], 0] - here[0], here[1] - low[held[0], 1]])
    gaps = np.append(gaps, high[held[0], 1] - here[1])
    side = int(np.argmin(gaps))
    axis, sign = side // 2, (-1.0 if side % 2 == 0 else 1.0)
    border = low[held, axis] if sign < 0 else high[held, axis]
    needed = sign * (border - positions[held, axis]) + reach[held] + 2.0
    distance = float(max(needed.max(), 0.0))
    t = np.arange(frames, dtype=np.float64)
    profile = _smoothstep((t - start) / ramp) * (1.0 - _smoothstep((t - (start + ramp + hold - 1)) / ramp))
    positions = positions.copy()
    positions[:, axis] += sign * distance * profile
    return positions


def sample_video(rng: np.random.Generator, *, frames: int, size: tuple[int, int]) -> tuple[list[Layer], dict]:
    """Sample one ToyVOS scene. Returns the layers (background first, then bottom-to-top) and its metadata.

    The scene is resampled (from the same generator) until every annotated object covers at least 1% of the image
    and at least 40% of its own in-view area is unoccluded in frame 0.
    """
    height, width = size
    for _ in range(_MAX_ATTEMPTS):
        layers, meta = _sample_scene(rng, frames=frames, size=size)
        first = render_video(layers, size=size, frames=1)
        targets = [index for index, layer in enumerate(layers) if layer.label > 0]
        visible, in_view = first.visible_area[0, targets], first.in_view_area[0, targets]
        if np.all(visible >= MIN_FIRST_FRAME_AREA * height * width) and np.all(visible >= 0.4 * in_view):
            return layers, meta
    raise RuntimeError(f"ToyVOS could not place visible objects in {_MAX_ATTEMPTS} attempts at size {size}")


def _sample_scene(rng: np.random.Generator, *, frames: int, size: tuple[int, int]) -> tuple[list[Layer], dict]:
    height, width = size
    unit = min(height, width) / 192.0
    camera, camera_mode = _camera(rng, frames=frames, size=size, unit=unit)

    background_kind = str(rng.choice(TEXTURE_KINDS))
    background_size = int(2 ** np.ceil(np.log2(max(height, width, 128))))
    background = Layer(
        texture=make_texture(rng, background_kind, size=background_size, muted=True), radii=None, affines=camera
    )

    num_targets = int(rng.integers(1, 5))
    num_distractors = int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))
    minimum_area = 1.5 * MIN_FIRST_FRAME_AREA * height * width
    objects: list[dict] = []
    for index in range(num_targets + num_distractors):
        is_target = index < num_targets
        if is_target:
            family, kind = str(rng.choice(SHAPE_FAMILIES)), str(rng.choice(TEXTURE_KINDS))
            radius = rng.uniform(0.07, 0.15) * min(height, width)
            texture = make_texture(rng, kind, size=int(2 ** np.ceil(np.log2(max(2 * radius, 64)))))
            like = None
        else:  # a look-alike of a random target: same shape family and texture (shifted), similar size
            like = int(rng.integers(0, num_targets))
            family, kind = objects[like]["shape"], objects[like]["texture"]
            radius = float(objects[like]["radii"].max()) * rng.uniform(0.8, 1.2)
            source = objects[like]["pixels"]
            texture = np.roll(source, tuple(rng.integers(0, source.shape[0], size=2)), axis=(0, 1))
        radii = make_shape(rng, family, radius=radius)
        area = 0.5 * float(np.mean(radii**2)) * 2.0 * np.pi
        if area < minimum_area:
            radii = radii * np.sqrt(minimum_area / area)
        span = (0.2, 0.8) if is_target else (0.05, 0.95)
        start = np.array([rng.uniform(*span) * (width - 1), rng.uniform(*span) * (height - 1)])
        positions = _wander(rng, start=start, camera=camera, size=size, unit=unit)
        scales, angles = _scale_rotation(rng, frames=frames)
        objects.append(
            dict(
                label=index + 1 if is_target else 0,
                role="object" if is_target else "distractor",
                shape=family,
                texture=kind,
                look_alike_of=None if like is None else like + 1,
                radii=radii,
                pixels=texture,
                positions=positions,
                scales=scales,
                angles=angles,
                excursion=False,
                routed_through=None,
            )
        )
    order = [int(i) for i in rng.permutation(len(objects))]  # z-order, bottom to top
    depth = {index: level for level, index in enumerate(order)}

    # leave the view and come back: one target in ~45% of videos long enough for it
    if frames >= 8 and rng.random() < 0.45:
        chosen = objects[int(rng.integers(0, num_targets))]
        reach = float(chosen["radii"].max()) * chosen["scales"]
        chosen["positions"] = _excursion(rng, positions=chosen["positions"], reach=reach, camera=camera, size=size)
        chosen["excursion"] = True

    # occlusion: in ~60% of videos, route a layer that lies above some target straight through that target
    candidates = [
        (target, above)
        for target in range(num_targets)
        for above in range(len(objects))
        if depth[above] > depth[target] and not objects[target]["excursion"] and not objects[above]["excursion"]
    ]
    if candidates and rng.random() < 0.6:
        target, above = candidates[int(rng.integers(0, len(candidates)))]
        crossing = int(rng.integers(max(1, frames // 3), max(2, (2 * frames) // 3 + 1)))
        # both start scale 1, so this is the distance at which they stop overlapping (world units)
        apart = float(objects[target]["radii"].max()) + float(objects[above]["radii"].max())
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        speed = rng.uniform(1.2, 2.0) * apart / crossing
        meet = objects[target]["positions"][crossing]
        objects[above]["positions"] = meet + np.outer(np.arange(frames) - crossing, direction * speed)
        objects[above]["routed_through"] = target + 1

    layers = [background]
    layer_meta: list[dict] = [dict(role="background", label=0, texture=background_kind)]
    for index in order:
        item = objects[index]
        affines = compose(camera, _poses(item["positions"], item["scales"], item["angles"]))
        layers.append(Layer(texture=item["pixels"], radii=item["radii"], affines=affines, label=item["label"]))
        layer_meta.append(
            {key: item[key] for key in ("role", "label", "shape", "texture", "look_alike_of")}
            | {"leaves_view": item["excursion"], "routed_through": item["routed_through"]}
        )
    meta = dict(
        objects=num_targets, distractors=num_distractors, camera=camera_mode, background=background_kind,
        layers=layer_meta,
    )  # fmt: skip
    return layers, meta


# ------------------------------------------------------------------------------------------------------------ writing
def _video_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))


def render_toyvos_video(*, seed: int, index: int, frames: int, size: tuple[int, int]) -> tuple[RenderedVideo, dict]:
    """Sample and render video number ``index`` (0-based over train then val) of the dataset with ``seed``.

    This is exactly what :func:`generate_toyvos` writes for that video, before JPEG compression. Returns the
    :class:`~voszoo.data.toy_render.RenderedVideo` and the sequence metadata (without per-frame areas).
    """
    layers, meta = sample_video(_video_rng(seed, index), frames=frames, size=size)
    return render_video(layers, size=size), meta


def _events(video: RenderedVideo, layers: list[dict]) -> dict:
    """Which phenomena occur in a rendered video, for the summary in toyvos.json."""
    targets = [i for i, layer in enumerate(layers) if layer["role"] == "object"]
    visible, in_view = video.visible_area[:, targets], video.in_view_area[:, targets]
    occluded = bool(np.any((in_view > 0) & (visible < 0.8 * in_view)))
    left = False
    for column in in_view.T:
        gone = np.flatnonzero(column == 0)
        left |= bool(gone.size and np.any(column[: gone[0]] > 0) and np.any(column[gone[0] :] > 0))
    return dict(occlusion=occluded, leaves_and_returns=left)


def _write_video(task: tuple[str, str, str, int, int, int, tuple[int, int]]) -> tuple[str, dict]:
    root_text, name, split, seed, index, frames, size = task
    root = Path(root_text)
    video, meta = render_toyvos_video(seed=seed, index=index, frames=frames, size=size)
    image_dir, label_dir, flow_dir = (root / sub / name for sub in ("JPEGImages/480p", "Annotations/480p", "Flow"))
    for folder in (image_dir, label_dir, flow_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        Image.fromarray(video.frames[t]).save(
            image_dir / f"{t:05d}.jpg", format="JPEG", quality=JPEG_QUALITY, subsampling=2
        )
        write_labels(label_dir / f"{t:05d}.png", video.labels[t])
        if t + 1 < frames:
            np.save(flow_dir / f"{t:05d}.npy", video.flow[t], allow_pickle=False)
    for position, layer in enumerate(meta["layers"]):
        layer["visible_area"] = video.visible_area[:, position].tolist()
        layer["in_view_area"] = video.in_view_area[:, position].tolist()
    events = _events(video, meta["layers"])
    full = dict(name=name, split=split, index=index, frames=frames, size=list(size)) | meta | dict(events=events)
    (root / "Meta").mkdir(exist_ok=True)
    (root / "Meta" / f"{name}.json").write_text(json.dumps(full, indent=1) + "\n")
    summary = {key: meta[key] for key in ("objects", "distractors", "camera", "background")} | events
    return name, summary


def _validate(*, videos: int, frames: int, size: Sequence[int], seed: int, workers: int) -> tuple[int, int]:
    for name, value, low in (("videos", videos, 2), ("frames", frames, 3), ("seed", seed, 0), ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"ToyVOS: {name} must be an integer >= {low}, got {value!r}")
    values = tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 32 for v in values):
        raise ValueError(f"ToyVOS: size must be (height, width), two integers >= 32, got {size!r}")
    return int(size[0]), int(size[1])


def _parameters(*, videos: int, frames: int, size: tuple[int, int], seed: int) -> dict:
    return dict(videos=int(videos), frames=int(frames), size=list(size), seed=int(seed))


def _existing(root: Path) -> dict | None:
    """The (format_version, parameters) recorded in ``root/toyvos.json``, or None if unreadable or not ToyVOS's."""
    try:
        record = json.loads((root / "toyvos.json").read_text())
        if record["format"] != "ToyVOS":
            return None
        return dict(format_version=record["format_version"], parameters=record["parameters"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def generate_toyvos(
    out: str | os.PathLike,
    *,
    videos: int = 80,
    frames: int = 24,
    size: tuple[int, int] = (192, 192),
    seed: int = 0,
    workers: int = 2,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write a ToyVOS dataset to ``out`` (DAVIS 2017 layout, see docs/toyvos.md) and return ``out`` as a Path.

    ``videos`` are split into ``max(1, videos // 5)`` val and the rest train sequences (``toy_train_000``, ...,
    ``toy_val_000``, ...), each of ``frames`` frames of ``size = (height, width)`` pixels. Output depends only on
    (videos, frames, size, seed), never on ``workers`` (processes rendering videos in parallel).

    If ``out`` already holds a ToyVOS dataset with the same parameters and format version, nothing is done (unless
    ``force``). A ToyVOS dataset with other parameters is replaced only with ``force``. A folder with other content
    (no ``toyvos.json``) is never deleted: that raises :class:`VOSDataError`, with or without ``force``.
    The dataset is built in a hidden sibling folder and renamed into place, so ``out`` is never left half-written.

    Concurrent runs on one folder take turns through a lock file beside it (``.<name>.toyvos.lock``): a run that
    finds the folder locked waits (saying for which process, up to :data:`LOCK_TIMEOUT` seconds), then checks the
    folder afresh: the same parameters find the dataset ready, other parameters get the error above. A folder that
    gains other content while the dataset is generated is left alone (VOSDataError).
    """
    height, width = _validate(videos=videos, frames=frames, size=size, seed=seed, workers=workers)
    root = Path(out)
    parameters = _parameters(videos=videos, frames=frames, size=(height, width), seed=seed)
    folder = Path(os.path.abspath(root))  # so that the lock and staging folder are siblings even for "." or "a/.."
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder.parent / f".{folder.name}.toyvos.lock", what=f"ToyVOS folder {root}")
    lock.acquire(timeout=LOCK_TIMEOUT, on_wait=lambda holder: logger.warning("%s: waiting for %s", root, holder))
    try:  # under the lock: a run that waited sees the dataset the holder made, and either uses it or refuses
        replace = _check_target(root, wanted=dict(format_version=FORMAT_VERSION, parameters=parameters), force=force)
        if replace is None:
            return root
        staging = folder.parent / f".{folder.name}.toyvos-partial-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _write_dataset(staging, parameters=parameters, workers=workers, progress=progress)
            _install(staging, folder, replace=replace)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        lock.release()
    return root


def _check_target(root: Path, *, wanted: dict, force: bool) -> bool | None:
    """What to do with the folder ``root``: None (it already holds the wanted dataset), False (create it; it is
    missing or empty), True (replace the ToyVOS dataset in it, with ``force``). Raises VOSDataError otherwise."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise VOSDataError(f"{root}: exists and is not a folder; ToyVOS needs a new or empty folder")
    if (root / "toyvos.json").is_file():
        found = _existing(root)
        if found == wanted and not force:
            return None
        if not force:
            raise VOSDataError(
                f"{root}: holds a ToyVOS dataset made with {found or 'an unreadable toyvos.json'}, not {wanted}; "
                "pass force=True (--force) to regenerate it, or choose another folder"
            )
        if found is None:
            raise VOSDataError(
                f"{root}: its toyvos.json is unreadable, so it is not deleted; remove the folder yourself"
            )
        return True
    if any(root.iterdir()):
        raise VOSDataError(
            f"{root}: folder is not empty and is not a ToyVOS dataset (no toyvos.json); choose a new or empty "
            "folder (force only replaces existing ToyVOS datasets)"
        )
    return False


def _install(staging: Path, folder: Path, *, replace: bool) -> None:
    """Rename the finished ``staging`` folder to ``folder``. Only an empty folder, or (``replace``) a ToyVOS dataset,
    is replaced: a folder that gained other content meanwhile is left alone and VOSDataError says so."""
    old = None
    if replace and _existing(folder) is not None:
        old = folder.parent / f".{folder.name}.toyvos-old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(folder, old)
    try:
        os.replace(staging, folder)  # rename(2) replaces an empty folder atomically, never a non-empty one
    except OSError as error:
        if old is not None:
            os.replace(old, folder)
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        shown = sorted(p.name for p in folder.iterdir())[:5] if folder.is_dir() else "a file"
        raise VOSDataError(
            f"{folder}: something else was written there while ToyVOS was being generated (found {shown}); it is "
            "left as it is and no dataset was installed; choose a new or empty folder"
        ) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_dataset(staging: Path, *, parameters: dict, workers: int, progress: bool) -> None:
    """Render every video and write toyvos.json into the new folder ``staging``."""
    videos, frames, (height, width), seed = (parameters[k] for k in ("videos", "frames", "size", "seed"))
    val = max(1, videos // 5)
    train = videos - val
    digits = max(3, len(str(max(train, val) - 1)))
    splits = {
        "train": [f"toy_train_{i:0{digits}d}" for i in range(train)],
        "val": [f"toy_val_{i:0{digits}d}" for i in range(val)],
    }
    staging.mkdir()
    tasks = [
        (str(staging), name, split, int(seed), index, int(frames), (height, width))
        for index, (split, name) in enumerate(
            [("train", n) for n in splits["train"]] + [("val", n) for n in splits["val"]]
        )
    ]
    summaries: dict[str, dict] = {}
    # the platform's default start method (fork on Linux); the pool starts before tqdm's monitor thread exists
    pool = multiprocessing.get_context().Pool(min(workers, len(tasks))) if workers > 1 else None
    try:
        results = pool.imap_unordered(_write_video, tasks) if pool is not None else map(_write_video, tasks)
        with tqdm(total=len(tasks), desc="ToyVOS", unit="video", disable=None if progress else True) as bar:
            for name, summary in results:
                summaries[name] = summary
                bar.update()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    sets = staging / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    for split, names in splits.items():
        (sets / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
    record = dict(
        format="ToyVOS",
        format_version=FORMAT_VERSION,
        parameters=parameters,
        generator="voszoo.data.toy.generate_toyvos",
        jpeg_quality=JPEG_QUALITY,
        layout=dict(
            images="JPEGImages/480p/<seq>/%05d.jpg",
            labels="Annotations/480p/<seq>/%05d.png",
            splits="ImageSets/2017/{train,val}.txt",
            flow="Flow/<seq>/%05d.npy",
            meta="Meta/<seq>.json",
        ),
        flow="forward flow from frame t to t+1, float32 (H, W, 2), channel 0 = dx (columns), 1 = dy (rows)",
        splits=splits,
        sequences={name: summaries[name] for name in sorted(summaries)},
    )
    (staging / "toyvos.json").write_text(json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``voszoo-toyvos``: write a ToyVOS dataset. Returns 0 on success, 1 on bad values or folder problems (2 on
    arguments argparse rejects)."""
    parser = argparse.ArgumentParser(
        prog="voszoo-toyvos",
        description="Generate ToyVOS, a procedural VOS dataset in the DAVIS 2017 layout (JPEGImages, Annotations, "
        "ImageSets, plus ground-truth forward flow in Flow/ and per-sequence metadata in Meta/). Re-running with the "
        "same arguments on the same folder does nothing.",
    )
    parser.add_argument("--out", required=True, help="dataset folder to create (new, empty, or an earlier ToyVOS)")
    parser.add_argument("--videos", type=int, default=80, help="number of videos; val = videos // 5 (default 80)")
    parser.add_argument("--frames", type=int, default=24, help="frames per video, >= 3 (default 24)")
    parser.add_argument("--size", type=int, nargs=2, default=[192, 192], metavar=("H", "W"), help="default 192 192")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes; output is identical (default 2)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the folder holds a ToyVOS dataset")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_verbose_flag(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed usage and the error (or --help)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if args.verbose:
        request_full_errors()

    def generate() -> int:
        root = generate_toyvos(
            args.out,
            videos=args.videos,
            frames=args.frames,
            size=tuple(args.size),
            seed=args.seed,
            workers=args.workers,
            force=args.force,
            progress=not args.no_progress,
        )
        print(f"ToyVOS ready at {root}")
        return 0

    # Every input of this command comes from the user: a ValueError here is a bad argument, not a bug.
    return run_command(generate, prog="voszoo-toyvos", also=(ValueError,))


if __name__ == "__main__":
    raise SystemExit(main())

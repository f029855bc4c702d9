"""Clip-consistent training augmentation and ImageNet normalisation.

Every frame of a clip receives the *same* geometry (one random crop, one resize, one flip) and the same colour jitter,
so that the motion between frames is the video's own motion and not an artefact of the augmentation. The recipe is the
one shared by STM (Oh et al., ICCV 2019, Sec. 4 "Training") and AOT (Yang et al., NeurIPS 2021, Sec. 4; official
``dataloaders/video_transforms.py``): a random scaled crop resized to the training size, a horizontal flip and a mild
colour jitter (AOT: brightness/contrast/saturation 0.1, hue 0.03), with the crop re-drawn until an object is visible
in the first frame (AOT's ``BalancedRandomCrop``: up to 5 tries, an object must keep more than 100 pixels).

Choices where the papers are silent (all exposed as arguments):

- The crop is drawn RandomResizedCrop-style: area fraction ``scale`` of the input frame and aspect ratio ``ratio``
  *relative to the output aspect ratio* (as AOT's ``RandomResizedCrop(ratio=base_ratio * (3/4, 4/3))``), clamped to
  the frame. If no crop keeps an object visible after ``max_crop_tries`` draws, the whole frame is used.
- Images are resized bilinearly with antialiasing; label maps with ``nearest-exact`` sampling (each output pixel takes
  the input pixel under its centre), which is the sampling grid the bilinear resize uses, so labels stay aligned with
  the image at any scale. Void (255) pixels stay 255.
- Colour jitter factors are drawn once per clip and applied in a random order (like torchvision's ``ColorJitter``);
  ``frame_jitter`` (default 0) adds an independent per-frame perturbation of up to that fraction of each range, to
  imitate small lighting changes between frames.

Ground-truth optical flow (:meth:`ClipTransform.with_flows`) gets the clip's geometry, as RAFT's and FlowNet's
augmentors treat flow: a crop slices the field (displacements are unchanged by a shift of the origin); a resize
resamples it and multiplies dx by ``W / crop_width`` and dy by ``H / crop_height`` (with half-pixel-centred pixels,
x' = (x + 0.5) * W / w - 0.5, so displacements scale by exactly that ratio); a horizontal flip mirrors it and negates
dx. Colour jitter does not touch it. The flow is resampled bilinearly with antialiasing like the image by default
(exact inside a region of affine motion, blended across motion boundaries exactly where the image blends), or with
``flow_interpolation="nearest"`` on the label maps' grid (each output pixel takes the flow of the input pixel under
its centre, never mixing two objects' motions).

All randomness comes from the ``np.random.Generator`` passed to :meth:`ClipTransform.__call__`; nothing touches the
global numpy/torch/python RNGs, so a clip is a pure function of its inputs and the generator state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from voszoo.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "normalize_image",
    "visible_objects",
    "resize_labels",
    "transform_flows",
    "ClipTransform",
]


def normalize_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise an image or a stack of images.

    ``image``: a numpy array, channels last, ``(..., H, W, 3)`` uint8; or a tensor, channels first, ``(..., 3, H, W)``,
    either uint8 (0..255) or floating point already scaled to [0, 1].
    Returns float32 ``(..., 3, H, W)``: ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` per channel.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim < 3 or image.shape[-1] != 3:
            raise ValueError(
                f"normalize_image: numpy input must be (..., H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only memory
            image = image.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3)
    elif isinstance(image, torch.Tensor):
        if image.ndim < 3 or image.shape[-3] != 3:
            raise ValueError(f"normalize_image: tensor input must be (..., 3, H, W), got shape {tuple(image.shape)}")
        tensor = image
    else:
        raise TypeError(f"normalize_image: expected a numpy array or a torch tensor, got {type(image).__name__}")
    scale = 255.0 if tensor.dtype == torch.uint8 else 1.0
    if not (tensor.dtype == torch.uint8 or tensor.is_floating_point()):
        raise ValueError(f"normalize_image: tensor input must be uint8 or floating point, got {tensor.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=tensor.device).view(3, 1, 1) * scale
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=tensor.device).view(3, 1, 1) * scale
    # one float copy, contiguous, then in place: (x / scale - mean) / std == (x - mean * scale) / (std * scale)
    return tensor.contiguous().to(torch.float32, copy=True).sub_(mean).div_(std)


def visible_objects(labels: np.ndarray, *, min_area: int) -> list[int]:
    """Object ids (1..254) that cover at least ``min_area`` pixels of the ``(H, W)`` label map, ascending.

    Background (0) and void (255) are never objects.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=256)
    return [int(k) for k in np.flatnonzero(counts[1:255] >= max(min_area, 1)) + 1]


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a ``(..., h, w)`` label map to ``(..., H, W)`` by nearest-exact sampling.

    Output pixel (i, j) takes input pixel ``(floor((i + 0.5) * h / H), floor((j + 0.5) * w / W))``: the input pixel
    under the output pixel's centre, the grid that a half-pixel-centred bilinear resize of the image uses.
    """
    h, w = labels.shape[-2:]
    out_h, out_w = size
    rows = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.int64), w - 1)
    return labels[..., rows[:, None], cols[None, :]]


def transform_flows(
    flows: np.ndarray,
    *,
    crop: tuple[int, int, int, int],
    size: tuple[int, int],
    flip: bool,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Apply a crop, a resize and an optional horizontal flip to flow fields (see the module docstring).

    ``flows``: (N, h, w, 2) float, channel 0 = dx (along columns), channel 1 = dy (along rows), in input pixels.
    ``crop``: (top, left, crop_height, crop_width) inside (h, w); ``size``: output (H, W); ``interpolation``:
    ``"bilinear"`` (antialiased, like the images) or ``"nearest"`` (nearest-exact, like the label maps).
    Returns (N, H, W, 2) float32 in output pixels: dx scaled by ``W / crop_width`` and dy by ``H / crop_height``,
    dx negated when ``flip``.
    """
    flows = np.asarray(flows)
    if flows.ndim != 4 or flows.shape[-1] != 2 or not np.issubdtype(flows.dtype, np.floating):
        raise ValueError(f"transform_flows: flows must be (N, h, w, 2) float, got {flows.shape} {flows.dtype}")
    if interpolation not in _FLOW_INTERPOLATIONS:
        raise ValueError(f"transform_flows: interpolation must be one of {_FLOW_INTERPOLATIONS}, got {interpolation!r}")
    top, left, crop_h, crop_w = (int(v) for v in crop)
    height, width = flows.shape[1:3]
    if crop_h < 1 or crop_w < 1 or top < 0 or left < 0 or top + crop_h > height or left + crop_w > width:
        raise ValueError(f"transform_flows: crop {crop} does not fit in a {height}x{width} flow field")
    out_h, out_w = int(size[0]), int(size[1])
    window = np.asarray(flows[:, top : top + crop_h, left : left + crop_w], dtype=np.float32)
    if interpolation == "nearest" or len(window) == 0:
        out = resize_labels(window.transpose(0, 3, 1, 2), (out_h, out_w)).transpose(0, 2, 3, 1)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(window.transpose(0, 3, 1, 2)))
        if (crop_h, crop_w) != (out_h, out_w):
            tensor = torch.nn.functional.interpolate(
                tensor, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
            )
        out = tensor.permute(0, 2, 3, 1).numpy()
    out = np.array(out, dtype=np.float32)  # a fresh, writable copy
    out[..., 0] *= out_w / crop_w
    out[..., 1] *= out_h / crop_h
    if flip:
        out = out[:, :, ::-1].copy()
        out[..., 0] *= -1.0
    return np.ascontiguousarray(out)


_FLOW_INTERPOLATIONS: tuple[str, ...] = ("bilinear", "nearest")


def _check_range(name: str, value: Sequence[float], *, low: float, high: float) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"ClipTransform: {name} must be a (min, max) pair, got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not (low <= a <= b <= high):
        raise ValueError(f"ClipTransform: {name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return a, b


class ClipTransform:
    """The same random crop, resize, flip and colour jitter for every frame of a clip.

    Arguments (keyword-only):
        size: output (H, W).
        scale: range of the crop area as a fraction of the input frame area.
        ratio: range of the crop aspect ratio (width / height) relative to the output aspect ratio, drawn
            log-uniformly; (1, 1) keeps the output aspect exactly.
        hflip_prob: probability of a horizontal flip (of the whole clip).
        color_jitter: (brightness, contrast, saturation, hue) ranges as in torchvision's ``ColorJitter``: factors
            drawn uniformly from [max(0, 1 - x), 1 + x] and a hue shift from [-hue, hue] (hue <= 0.5); ``None`` or all
            zeros disables jitter.
        frame_jitter: fraction (0..1) of each jitter range added independently per frame on top of the clip's
            factors; 0 gives identical colour treatment on every frame.
        min_object_area: pixels (at the output size) an object needs in the first frame to count as visible.
        max_crop_tries: crops drawn before falling back to the whole frame.
        flow_interpolation: ``"bilinear"`` or ``"nearest"``: how :meth:`with_flows` resamples flow fields.

    ``__call__(frames, labels, rng)``: ``frames`` is a list of T ``(h, w, 3)`` uint8 arrays, ``labels`` a list of T
    ``(h, w)`` integer label maps (0 background, 1..254 objects, 255 void) of the same size. Returns
    ``(frames, labels)``: T ``(H, W, 3)`` uint8 arrays and T ``(H, W)`` uint8 arrays.
    :meth:`with_flows` also transforms the clip's flow fields with the same geometry.
    """

    def __init__(
        self,
        *,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_prob: float = 0.5,
        color_jitter: tuple[float, float, float, float] | None = (0.1, 0.1, 0.1, 0.03),
        frame_jitter: float = 0.0,
        min_object_area: int = 20,
        max_crop_tries: int = 10,
        flow_interpolation: str = "bilinear",
    ) -> None:
        if len(size) != 2 or min(int(size[0]), int(size[1])) < 1:
            raise ValueError(f"ClipTransform: size must be a positive (H, W) pair, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.scale = _check_range("scale", scale, low=1e-6, high=1.0)
        self.ratio = _check_range("ratio", ratio, low=1e-6, high=math.inf)
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"ClipTransform: hflip_prob must lie in [0, 1], got {hflip_prob}")
        self.hflip_prob = float(hflip_prob)
        jitter = (0.0, 0.0, 0.0, 0.0) if color_jitter is None else tuple(float(x) for x in color_jitter)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(
                "ClipTransform: color_jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, "
                f"got {color_jitter!r}"
            )
        self.color_jitter: tuple[float, float, float, float] = jitter  # type: ignore[assignment]
        if not 0.0 <= frame_jitter <= 1.0:
            raise ValueError(f"ClipTransform: frame_jitter must lie in [0, 1], got {frame_jitter}")
        self.frame_jitter = float(frame_jitter)
        if min_object_area < 1:
            raise ValueError(f"ClipTransform: min_object_area must be >= 1 pixel, got {min_object_area}")
        self.min_object_area = int(min_object_area)
        if max_crop_tries < 1:
            raise ValueError(f"ClipTransform: max_crop_tries must be >= 1, got {max_crop_tries}")
        self.max_crop_tries = int(max_crop_tries)
        if flow_interpolation not in _FLOW_INTERPOLATIONS:
            raise ValueError(
                f"ClipTransform: flow_interpolation must be one of {_FLOW_INTERPOLATIONS}, got {flow_interpolation!r}"
            )
        self.flow_interpolation = flow_interpolation

    def __repr__(self) -> str:
        return (
            f"ClipTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip_prob={self.hflip_prob}, "
            f"color_jitter={self.color_jitter}, frame_jitter={self.frame_jitter}, "
            f"min_object_area={self.min_object_area}, max_crop_tries={self.max_crop_tries}, "
            f"flow_interpolation={self.flow_interpolation!r})"
        )

    # -- geometry -------------------------------------------------------------------------------------------------
    def draw_crop(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """One random crop ``(top, left, crop_height, crop_width)`` of a ``height`` x ``width`` frame."""
        out_h, out_w = self.size
        area = height * width * rng.uniform(*self.scale)
        aspect = (out_w / out_h) * math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        crop_w = min(max(round(math.sqrt(area * aspect)), 1), width)
        crop_h = min(max(round(math.sqrt(area / aspect)), 1), height)
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        return top, left, crop_h, crop_w

    def choose_crop(self, first_labels: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A crop under which some object keeps ``min_object_area`` pixels of the first frame at the output size.

        Up to ``max_crop_tries`` random crops are drawn; if none qualifies, the whole frame is returned.
        """
        height, width = first_labels.shape
        for _ in range(self.max_crop_tries):
            top, left, crop_h, crop_w = self.draw_crop(height, width, rng)
            window = resize_labels(first_labels[top : top + crop_h, left : left + crop_w], self.size)
            if visible_objects(window, min_area=self.min_object_area):
                return top, left, crop_h, crop_w
        return 0, 0, height, width

    # -- colour ---------------------------------------------------------------------------------------------------
    def _jitter_factors(self, rng: np.random.Generator) -> np.ndarray:
        b, c, s, h = self.color_jitter
        return np.array(
            [
                rng.uniform(max(0.0, 1 - b), 1 + b),
                rng.uniform(max(0.0, 1 - c), 1 + c),
                rng.uniform(max(0.0, 1 - s), 1 + s),
                rng.uniform(-h, h),
            ]
        )

    @staticmethod
    def _apply_jitter(images: torch.Tensor, factors: np.ndarray, order: np.ndarray) -> torch.Tensor:
        for op in order:
            if op == 0:
                images = TF.adjust_brightness(images, float(factors[0]))
            elif op == 1:
                images = TF.adjust_contrast(images, float(factors[1]))
            elif op == 2:
                images = TF.adjust_saturation(images, float(factors[2]))
            elif factors[3] != 0.0:
                images = TF.adjust_hue(images, float(factors[3]))
        return images

    def jitter(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Colour-jitter a ``(T, 3, H, W)`` uint8 clip (factors per clip, plus ``frame_jitter`` per frame)."""
        if not any(self.color_jitter):
            return images
        factors = self._jitter_factors(rng)
        order = rng.permutation(4)
        if self.frame_jitter == 0.0:
            return self._apply_jitter(images, factors, order)
        b, c, s, h = self.color_jitter
        spread = self.frame_jitter * np.array([b, c, s, h])
        frames = []
        for t in range(images.shape[0]):
            local = factors + rng.uniform(-spread, spread)
            local[:3] = np.maximum(local[:3], 0.0)
            local[3] = np.clip(local[3], -0.5, 0.5)
            frames.append(self._apply_jitter(images[t : t + 1], local, order))
        return torch.cat(frames)

    # -- whole clip -----------------------------------------------------------------------------------------------
    def __call__(
        self, frames: Sequence[np.ndarray], labels: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        out_frames, out_labels, _ = self._apply(frames, labels, None, rng)
        return out_frames, out_labels

    def with_flows(
        self,
        frames: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        flows: Sequence[np.ndarray],
        rng: np.random.Generator,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Like ``__call__``, plus T-1 flow fields ``flows[t]`` (h, w, 2) float (frame t -> t+1, dx then dy, input
        pixels) given the same crop, resize and flip (:func:`transform_flows`). Returns (frames, labels, flows) with
        flows T-1 (H, W, 2) float32 arrays in output pixels. Draws from ``rng`` exactly what ``__call__`` draws, so
        frames and labels are the ones ``__call__`` gives for the same generator state.
        """
        out_frames, out_labels, out_flows = self._apply(frames, labels, flows, rng)
        assert out_flows is not None
        return out_frames, out_labels, out_flows

    def _apply(
        self,
        frames: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        flows: Sequence[np.ndarray] | None,
        rng: np.random.Generator,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
        images, label_stack = _stack_clip(frames, labels)
        flow_stack = None if flows is None else _stack_flows(flows, num_frames=len(images), size=images.shape[1:3])
        top, left, crop_h, crop_w = self.choose_crop(label_stack[0], rng)
        flip = bool(rng.random() < self.hflip_prob)

        tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # (T, 3, h, w) uint8
        tensor = TF.resized_crop(
            tensor, top, left, crop_h, crop_w, list(self.size), interpolation=InterpolationMode.BILINEAR, antialias=True
        )
        out_labels = resize_labels(label_stack[:, top : top + crop_h, left : left + crop_w], self.size)
        if flip:
            tensor = tensor.flip(-1)
            out_labels = out_labels[..., ::-1]
        tensor = self.jitter(tensor, rng)

        out_images = tensor.permute(0, 2, 3, 1).contiguous().numpy()
        out_labels = np.ascontiguousarray(out_labels)
        out_flows = None
        if flow_stack is not None:
            moved = transform_flows(
                flow_stack,
                crop=(top, left, crop_h, crop_w),
                size=self.size,
                flip=flip,
                interpolation=self.flow_interpolation,
            )
            out_flows = [moved[t] for t in range(len(moved))]
        return (
            [out_images[t] for t in range(len(out_images))],
            [out_labels[t] for t in range(len(out_labels))],
            out_flows,
        )


def _stack_flows(flows: Sequence[np.ndarray], *, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """Validate and stack T-1 flow fields of a T-frame clip of ``size`` (h, w): returns (T-1, h, w, 2) float32."""
    if len(flows) != num_frames - 1:
        raise ValueError(
            f"ClipTransform: a {num_frames}-frame clip needs {num_frames - 1} flow fields, got {len(flows)}"
        )
    height, width = int(size[0]), int(size[1])
    for t, flow in enumerate(flows):
        flow = np.asarray(flow)
        if flow.shape != (height, width, 2) or not np.issubdtype(flow.dtype, np.floating):
            raise ValueError(
                f"ClipTransform: flow {t} must be ({height}, {width}, 2) float like the frames, got {flow.shape} "
                f"{flow.dtype}"
            )
    if not flows:
        return np.zeros((0, height, width, 2), dtype=np.float32)
    return np.stack(flows).astype(np.float32, copy=False)


def _stack_clip(frames: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Validate and stack a clip: returns (T, h, w, 3) uint8 images and (T, h, w) uint8 labels."""
    if len(frames) == 0 or len(frames) != len(labels):
        raise ValueError(
            f"ClipTransform: need T >= 1 frames and as many label maps, got {len(frames)} and {len(labels)}"
        )
    height, width = np.asarray(frames[0]).shape[:2]
    for t, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        frame, label = np.asarray(frame), np.asarray(label)
        if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
            raise ValueError(
                f"ClipTransform: frame {t} must be ({height}, {width}, 3) uint8 like frame 0, "
                f"got {frame.shape} {frame.dtype}"
            )
        if label.shape != (height, width):
            raise ValueError(
                f"ClipTransform: label map {t} must be ({height}, {width}) like frame 0, got {label.shape}"
            )
        if label.dtype != np.uint8 and label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"ClipTransform: label map {t} has values outside 0..255 ({label.min()}..{label.max()})")
    return np.stack(frames).astype(np.uint8, copy=False), np.stack(labels).astype(np.uint8)

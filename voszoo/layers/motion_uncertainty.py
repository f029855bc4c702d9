"""MUNet's Motion Uncertainty-aware Layer (MU-Layer) and Motion-aware Spatial Attention Module (MSAM).

Sun, Mao, Dai, Zhong and Wang, "MUNet: Motion Uncertainty-aware Semi-supervised Video Object Segmentation"
(shared/papers/002, Sec. 3.2 "Motion Uncertainty-aware Layer", Eq. 1-2, Table 1; Sec. 3.3 "MSAM", Eq. 3). No
official code is public: the paper is the specification, and every choice it leaves open is an argument (defaults
below, reasons in each docstring).

The MU-Layer compares the stride-16 query-encoder features of frames t-1 and t:

1. a shared 1x1 convolution reduces D channels to D/4 for both frames;
2. Eq. 1, a local cosine-similarity cost volume: for every pixel x of frame t and every displacement u of a U x V
   window (25 x 25), C(u, x) = cos(F_t(x), F_{t-1}(x + u)) (:func:`local_cost_volume`: tiled correlation, never a
   dense HW x HW matrix);
3. displacement by soft-argmin over the window, u^ = sum_u u softmax(C(u, x)) (:func:`soft_argmin_displacement`);
4. Eq. 2, the "uncertainty" map U(x) = max_u C(u, x) (:func:`window_max`; despite its name a matching confidence);
5. Table 1: the 3-channel motion tensor [u^_x, u^_y, U] goes through 8 convolutions to D channels
   (:class:`MotionFeatureNet`).

MSAM (Eq. 3) fuses the motion feature F_m into the semantic feature F_s: F_out = F_s * sigmoid(conv1x1(F_m)) + F_s
(:class:`MotionSpatialAttention`); the ablation of Table 4 (f) adds them instead (:class:`AdditiveFusion`).
:class:`MotionEnhancement` chains the two: ``(F_s of t-1, F_s of t) -> F_out of t``, the ``motion`` slot of
:class:`voszoo.models.stm.STM`.

Conventions: displacements are in feature cells, channel 0 = horizontal (x, columns), channel 1 = vertical (y,
rows), like optical flow; u^ at pixel x of the *current* frame points to its match x + u^ in the *previous* frame
(Eq. 1's F_{t-1}(x + u)), i.e. the backward flow at stride 16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdditiveFusion",
    "MULayer",
    "MotionEnhancement",
    "MotionFeatureNet",
    "MotionSpatialAttention",
    "TABLE1_CHANNELS",
    "TABLE1_KERNELS",
    "local_cost_volume",
    "soft_argmin_displacement",
    "window_max",
    "window_offsets",
    "window_validity",
]

#: output channels of layers 1-7 of the motion feature network (MUNet Table 1); layer 8 outputs D
TABLE1_CHANNELS: tuple[int, ...] = (3, 16, 16, 32, 32, 32, 64)
#: kernel sizes of layers 1-8 (MUNet Table 1); every stride is 1
TABLE1_KERNELS: tuple[int, ...] = (7, 1, 3, 1, 3, 1, 3, 1)

Outside = Literal["exclude", "zero"]


def _window(window: int | Sequence[int]) -> tuple[int, int]:
    size = (int(window), int(window)) if isinstance(window, int) else tuple(int(w) for w in window)
    if len(size) != 2 or any(w < 1 or w % 2 == 0 for w in size):
        raise ValueError(f"window must be an odd int or two odd ints (height, width) >= 1, got {window!r}")
    return size  # type: ignore[return-value]


def window_offsets(
    window: int | Sequence[int], *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Vertical offsets (U,) and horizontal offsets (V,) of a U x V window: -(U // 2) .. U // 2, and likewise."""
    u, v = _window(window)
    dy = torch.arange(u, device=device, dtype=dtype) - u // 2
    dx = torch.arange(v, device=device, dtype=dtype) - v // 2
    return dy, dx


def window_validity(
    height: int, width: int, *, window: int | Sequence[int], device: torch.device | None = None
) -> Tensor:
    """(U, V, H, W) bool: whether the displaced position x + u of every (u, x) lies inside the H x W map."""
    dy, dx = window_offsets(window, device=device, dtype=torch.long)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    inside_y = ((ys[None, :] + dy[:, None]) >= 0) & ((ys[None, :] + dy[:, None]) < height)  # (U, H)
    inside_x = ((xs[None, :] + dx[:, None]) >= 0) & ((xs[None, :] + dx[:, None]) < width)  # (V, W)
    return inside_y[:, None, :, None] & inside_x[None, :, None, :]


def local_cost_volume(
    current: Tensor, previous: Tensor, *, window: int | Sequence[int] = 25, eps: float = 1e-8, tile: int = 32
) -> Tensor:
    """MUNet Eq. 1: cosine similarity of every pixel of ``current`` with a U x V window of ``previous``.

    current, previous: (B, C, H, W). Returns C (B, U, V, H, W) with
    ``C[b, i, j, y, x] = cos(current[b, :, y, x], previous[b, :, y + i - U//2, x + j - V//2])``, and 0 where the
    displaced position falls outside the map (the value a correlation of zero-padded features gives; see
    :func:`window_validity` to exclude those entries instead). A feature vector of norm below ``eps`` counts as norm
    ``eps`` (as :func:`torch.nn.functional.normalize`), so an all-zero vector has similarity 0.

    Computed per window row i and per block of ``tile`` columns: for every image row y, one batched matrix product
    of the block's ``tile`` query vectors with the ``tile + V - 1`` candidate vectors of row y + i - U//2, whose
    diagonal band holds the V displacements (read by a strided view). No HW x HW matrix is formed; the work is
    (tile + V - 1) / V times the U V H W C of the direct sum (about 2x at the defaults), done in a few large products.
    """
    if current.ndim != 4 or current.shape != previous.shape:
        raise ValueError(
            "local_cost_volume: current and previous must both be (B, C, H, W) of the same shape, got "
            f"{tuple(current.shape)} and {tuple(previous.shape)}"
        )
    if tile < 1:
        raise ValueError(f"local_cost_volume: tile must be >= 1, got {tile}")
    u, v = _window(window)
    height, width = current.shape[-2:]
    query = F.normalize(current, dim=1, eps=eps)
    padded = F.pad(F.normalize(previous, dim=1, eps=eps), (v // 2, v // 2, u // 2, u // 2))  # (B, C, H+U-1, W+V-1)
    rows = []
    for i in range(u):
        band = padded[:, :, i : i + height]  # (B, C, H, W + V - 1): window row i of every image row
        blocks = []
        for x0 in range(0, width, tile):
            w = min(tile, width - x0)
            products = torch.einsum("bchx,bchz->bhxz", query[..., x0 : x0 + w], band[..., x0 : x0 + w + v - 1])
            blocks.append(_diagonal_band(products, v))  # (B, H, w, V)
        rows.append(torch.cat(blocks, dim=2))
    return torch.stack(rows, dim=1).permute(0, 1, 4, 2, 3)  # (B, U, H, W, V) -> (B, U, V, H, W)


def _diagonal_band(products: Tensor, v: int) -> Tensor:
    """(..., w, w + v - 1) -> (..., w, v) with out[..., x, j] = products[..., x, x + j].

    Flattened, element (x, x + j) sits at x (w + v - 1) + x + j = x (w + v) + j: pad the flat array by w and view
    it with rows of length w + v.
    """
    w = products.shape[-2]
    flat = F.pad(products.flatten(-2), (0, w))
    return flat.unflatten(-1, (w, w + v))[..., :v]


def _masked(cost: Tensor, valid: Tensor | None, what: str) -> Tensor:
    if cost.ndim != 5:
        raise ValueError(f"{what}: cost must be (B, U, V, H, W), got {tuple(cost.shape)}")
    if valid is None:
        return cost
    if valid.shape != cost.shape[1:] and valid.shape != cost.shape:
        raise ValueError(f"{what}: valid must be (U, V, H, W) = {tuple(cost.shape[1:])}, got {tuple(valid.shape)}")
    return cost.masked_fill(~valid, float("-inf"))


def soft_argmin_displacement(
    cost: Tensor, *, temperature: float = 0.05, paper_sign: bool = False, valid: Tensor | None = None
) -> Tensor:
    """MUNet Sec. 3.2 "Displacement Calculation": the expected displacement under a softmax over the window.

    cost: (B, U, V, H, W) from :func:`local_cost_volume`. Returns (B, 2, H, W): channel 0 = sum_u u_x p(u),
    channel 1 = sum_u u_y p(u), in feature cells, with p = softmax over the U*V displacements of ``cost /
    temperature`` (``paper_sign=False``, the default) or of ``-cost / temperature`` (``paper_sign=True``).

    - Sign: Sec. 3.2 prints u^ = sum_u u softmax(-C(u, x)), the soft-argmin of a *cost*, but Eq. 1's C is a
      *similarity*, so the printed formula weights the least similar displacements most. The default is the
      soft-argmax of the similarity, which recovers the best-matching displacement (tests/test_motion_uncertainty.py
      checks both); ``paper_sign=True`` computes the formula as printed.
    - Temperature: not in the paper (it is 1 there). Cosines lie in [-1, 1], so at temperature 1 a 25 x 25 window
      gives an almost uniform softmax (the best match at most e^2 ~ 7.4 times the weight of any of the 624 others)
      and u^ collapses towards the window centre; the default 0.05 makes a clear match dominate while staying
      smooth enough for sub-pixel estimates.
    - ``valid`` (U, V, H, W) bool, e.g. :func:`window_validity`: displacements leaving the map are excluded from the
      softmax (None: every window entry takes part with its value, 0 for out-of-map entries).
    """
    if temperature <= 0:
        raise ValueError(f"soft_argmin_displacement: temperature must be > 0, got {temperature}")
    logits = _masked(-cost if paper_sign else cost, valid, "soft_argmin_displacement") / temperature
    u, v = cost.shape[1:3]
    prob = logits.flatten(1, 2).softmax(dim=1).unflatten(1, (u, v))  # (B, U, V, H, W)
    dy, dx = window_offsets((u, v), device=cost.device, dtype=prob.dtype)
    disp_x = torch.einsum("buvhw,v->bhw", prob, dx)
    disp_y = torch.einsum("buvhw,u->bhw", prob, dy)
    return torch.stack([disp_x, disp_y], dim=1)


def window_max(cost: Tensor, *, valid: Tensor | None = None) -> Tensor:
    """MUNet Eq. 2: U_map(x) = max over the window of C(u, x). cost (B, U, V, H, W) -> (B, 1, H, W).

    ``valid`` (U, V, H, W) bool excludes displacements that leave the map (the centre, u = 0, is always valid).
    The paper calls this the uncertainty map; it is the best matching score (high = confident match).
    """
    return _masked(cost, valid, "window_max").flatten(1, 2).amax(dim=1, keepdim=True)


class MotionFeatureNet(nn.Module):
    """MUNet Table 1: the lightweight network lifting the motion tensor (B, 3, H', W') to (B, D, H', W').

    Eight 2D convolutions, stride 1, "same" padding (k // 2; Table 1 keeps the H' x W' size), output channels
    ``channels`` then ``out_channels`` = D, kernels ``kernels`` (defaults: Table 1, 3-16-16-32-32-32-64-D and
    7-1-3-1-3-1-3-1). Table 1 lists no activation or normalisation; voszoo puts a ReLU after layers 1-7 and none
    after the last (``final_activation=False``), so the motion feature is a linear projection like a key/value
    embedding, and no normalisation layer.

    Args:
        in_channels: motion channels (3 = displacement x, y + uncertainty; 2 or 1 in the Table 4 ablations).
        out_channels: D, the semantic feature channels.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 1024,
        channels: Sequence[int] = TABLE1_CHANNELS,
        kernels: Sequence[int] = TABLE1_KERNELS,
        final_activation: bool = False,
    ) -> None:
        super().__init__()
        widths = [int(in_channels), *(int(c) for c in channels), int(out_channels)]
        kernels = [int(k) for k in kernels]
        if len(kernels) != len(widths) - 1:
            raise ValueError(
                f"MotionFeatureNet: {len(widths) - 1} layers from channels={list(channels)} + out_channels, but "
                f"{len(kernels)} kernels ({kernels}); give one kernel per layer"
            )
        if any(k < 1 or k % 2 == 0 for k in kernels) or min(widths) < 1:
            raise ValueError(f"MotionFeatureNet: kernels must be odd >= 1 and channels >= 1, got {kernels}, {widths}")
        layers: list[nn.Module] = []
        for index, (c_in, c_out, k) in enumerate(zip(widths[:-1], widths[1:], kernels, strict=True)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=k, stride=1, padding=k // 2))
            if index < len(kernels) - 1 or final_activation:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.layers if isinstance(m, nn.Conv2d)]

    def forward(self, motion: Tensor) -> Tensor:
        return self.layers(motion)


class MULayer(nn.Module):
    """MUNet's MU-Layer (Sec. 3.2): two stride-16 feature maps -> motion feature F_m (B, D, H', W').

    ``forward(previous, current)`` with previous = F^s_{t-1}, current = F^s_t, both (B, D, H', W'); the same 1x1
    reduction (D -> D / ``reduction``) is applied to both. :meth:`estimate` returns the displacement and uncertainty
    maps on the way (for inspection and ``benchmarks/bench_munet_epe.py``).

    Args:
        in_channels: D (1024 for ResNet-50 ``res4``, 256 for ResNet-18).
        reduction: channel reduction of the 1x1 convolution before the cost volume (paper: 4).
        window: the U x V search window, an odd int or (height, width) (paper: 25 x 25).
        temperature, paper_sign: of :func:`soft_argmin_displacement` (paper silent on the temperature; its printed
            sign is ``paper_sign=True``).
        outside: what the window entries that fall outside the map mean (paper silent): ``"exclude"`` (default)
            leaves them out of the soft-argmin and the maximum, so they are not displacement hypotheses;
            ``"zero"`` keeps them with similarity 0, as a correlation of zero-padded features does.
        use_displacement, use_uncertainty: Table 4 ablation switches; the motion tensor keeps only the enabled parts
            (2 + 1 channels by default) and the motion network's first layer takes that many channels.
        motion_channels, motion_kernels, final_activation: of :class:`MotionFeatureNet` (Table 1).
        eps: of :func:`local_cost_volume`.

    Displacements enter the motion network in feature cells (up to +-12 for a 25-wide window), unnormalised (paper
    silent).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        reduction: int = 4,
        window: int | Sequence[int] = 25,
        temperature: float = 0.05,
        paper_sign: bool = False,
        outside: Outside = "exclude",
        use_displacement: bool = True,
        use_uncertainty: bool = True,
        motion_channels: Sequence[int] = TABLE1_CHANNELS,
        motion_kernels: Sequence[int] = TABLE1_KERNELS,
        final_activation: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if in_channels < reduction or in_channels % reduction:
            raise ValueError(f"MULayer: in_channels={in_channels} must be a positive multiple of reduction={reduction}")
        if outside not in ("exclude", "zero"):
            raise ValueError(f"MULayer: outside must be 'exclude' or 'zero', got {outside!r}")
        if not (use_displacement or use_uncertainty):
            raise ValueError(
                "MULayer: use_displacement and use_uncertainty are both False, which leaves no motion input; "
                "drop the motion module instead (Table 4 (a)/(b) are the STM presets)"
            )
        if temperature <= 0:
            raise ValueError(f"MULayer: temperature must be > 0, got {temperature}")
        self.in_channels = int(in_channels)
        self.window = _window(window)
        self.temperature = float(temperature)
        self.paper_sign = bool(paper_sign)
        self.outside = outside
        self.use_displacement = bool(use_displacement)
        self.use_uncertainty = bool(use_uncertainty)
        self.eps = eps
        self.reduce = nn.Conv2d(in_channels, in_channels // reduction, kernel_size=1)
        self.motion_net = MotionFeatureNet(
            in_channels=2 * self.use_displacement + self.use_uncertainty,
            out_channels=in_channels,
            channels=motion_channels,
            kernels=motion_kernels,
            final_activation=final_activation,
        )

    def cost_volume(self, previous: Tensor, current: Tensor) -> tuple[Tensor, Tensor | None]:
        """Reduced features -> (cost (B, U, V, H', W'), valid (U, V, H', W') bool or None)."""
        if previous.shape != current.shape or current.ndim != 4 or current.shape[1] != self.in_channels:
            raise ValueError(
                f"MULayer: previous and current must both be (B, {self.in_channels}, H, W), got "
                f"{tuple(previous.shape)} and {tuple(current.shape)}"
            )
        cost = local_cost_volume(self.reduce(current), self.reduce(previous), window=self.window, eps=self.eps)
        valid = None
        if self.outside == "exclude":
            valid = window_validity(*current.shape[-2:], window=self.window, device=current.device)
        return cost, valid

    def estimate(self, previous: Tensor, current: Tensor) -> tuple[Tensor, Tensor]:
        """Displacement (B, 2, H', W') (x, y, feature cells, current -> previous) and uncertainty (B, 1, H', W')."""
        cost, valid = self.cost_volume(previous, current)
        displacement = soft_argmin_displacement(
            cost, temperature=self.temperature, paper_sign=self.paper_sign, valid=valid
        )
        return displacement, window_max(cost, valid=valid)

    def forward(self, previous: Tensor, current: Tensor) -> Tensor:
        displacement, uncertainty = self.estimate(previous, current)
        parts = ([displacement] if self.use_displacement else []) + ([uncertainty] if self.use_uncertainty else [])
        return self.motion_net(torch.cat(parts, dim=1).to(current.dtype))

    def extra_repr(self) -> str:
        return (
            f"window={self.window}, temperature={self.temperature}, paper_sign={self.paper_sign}, "
            f"outside={self.outside!r}, use_displacement={self.use_displacement}, "
            f"use_uncertainty={self.use_uncertainty}"
        )


def _check_pair(semantic: Tensor, motion: Tensor, channels: int | None, what: str) -> None:
    if semantic.ndim != 4 or semantic.shape != motion.shape:
        raise ValueError(
            f"{what}: semantic and motion features must both be (B, D, H, W) of the same shape, got "
            f"{tuple(semantic.shape)} and {tuple(motion.shape)}"
        )
    if channels is not None and semantic.shape[1] != channels:
        raise ValueError(f"{what}: built for D={channels} channels, got {semantic.shape[1]}")


class MotionSpatialAttention(nn.Module):
    """MUNet Eq. 3 (MSAM): F_out = F_s * sigmoid(Conv1x1(F_m)) + F_s, a one-channel spatial attention map.

    ``forward(semantic, motion)``: both (B, D, H, W) -> (B, D, H, W). :meth:`attention` gives the (B, 1, H, W) map
    (Fig. 7). The 1x1 convolution has a bias (paper silent).
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.channels = int(channels)
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)

    def attention(self, motion: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(motion))

    def forward(self, semantic: Tensor, motion: Tensor) -> Tensor:
        _check_pair(semantic, motion, self.channels, "MotionSpatialAttention")
        return semantic * self.attention(motion) + semantic


class AdditiveFusion(nn.Module):
    """MUNet Sec. 3.3, Table 4 (f): F_out = F_s + F_m. ``channels`` (optional) is checked, nothing is learned."""

    def __init__(self, *, channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, semantic: Tensor, motion: Tensor) -> Tensor:
        _check_pair(semantic, motion, self.channels, "AdditiveFusion")
        return semantic + motion


class MotionEnhancement(nn.Module):
    """MU-Layer then fusion (MUNet Fig. 2): ``(previous (B, D, H', W'), current (B, D, H', W')) -> enhanced current``.

    The motion-enhanced feature of frame t, F_out = fusion(F^s_t, mu_layer(F^s_{t-1}, F^s_t)), replaces F^s_t as the
    input of the query key/value embedding (Sec. 3.1). This is the ``motion`` slot of
    :class:`voszoo.models.stm.STM` (``conf/model/motion/``).

    ``mu_layer`` and ``fusion`` may be partials (``_partial_: true``) without their width: ``channels`` D, which the
    STM reads off its query encoder, then completes them (``in_channels=D``, ``channels=D``).
    """

    def __init__(
        self,
        *,
        mu_layer: nn.Module | Callable[..., nn.Module],
        fusion: nn.Module | Callable[..., nn.Module],
        channels: int | None = None,
    ) -> None:
        super().__init__()
        unsized = [name for name, part in (("mu_layer", mu_layer), ("fusion", fusion)) if isinstance(part, partial)]
        if unsized and channels is None:
            raise ValueError(f"MotionEnhancement: {unsized} are partials: pass `channels` (D) to complete them")
        if isinstance(mu_layer, partial):
            mu_layer = mu_layer(**({} if mu_layer.keywords.get("in_channels") else {"in_channels": channels}))
        if isinstance(fusion, partial):
            fusion = fusion(**({} if fusion.keywords.get("channels") else {"channels": channels}))
        self.mu_layer = mu_layer
        self.fusion = fusion

    def forward(self, previous: Tensor, current: Tensor) -> Tensor:
        return self.fusion(current, self.mu_layer(previous, current))

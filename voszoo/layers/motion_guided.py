"""Motion-guided attention: a Gaussian prior of the previous mask that modulates a memory read.

Zhou, Huang, Huang, Gong, Shen, Liu and Wang, "Motion-Guided Spatial Time Attention for Video Object Segmentation"
(shared/papers/004, Sec. 2.1 "Motion-Guided Attention Module", Fig. 2). No official code is public: the paper is the
specification, and every choice it leaves open is an argument (defaults below, reasons in each docstring).

The module takes the current frame's query key k_n, the previous predicted mask M_{n-1} of one object and, through a
matcher, the memory keys and values:

1. ``Gauss(M_{n-1})``: a 2-D Gaussian heat map fitted to the mask (:func:`gaussian_mask_prior`; the paper: "similar
   to [11]", OSMN's spatial prior), all ones when the mask is empty ("we simply reverse the value to 1");
2. W and b, each H x W x 1, are learned from concat(k_n, Gauss(M_{n-1})) by a small conv head;
3. the prior P = W * Gauss(M_{n-1}) + b is one value per *query* position j;
4. P multiplies the STM affinity, the THW x HW "correlation probability map" after its softmax over the memory
   positions i: A'_ij = A_ij P_j, and the read is sum_i A'_ij v_i.

Because P is indexed by the query position only, step 4 has a closed form: sum_i A_ij P_j v_i = P_j read_j, i.e. the
paper's product scales each query position's read by P_j and suppresses the read (not the query's own value) far
from where the object was. :meth:`MotionGuidedPrior.modulated_read` computes it that way, which is exactly the
explicit product (:func:`motion_guided_memory_read` materialises it; tests check both agree, forward and backward).
Two consequences for the other forms, which the paper does not use:

- renormalising the product over the memory positions (divide column j by sum_i A_ij P_j = P_j) gives back A: the
  renormalised product is the plain read;
- a per-query log-bias added to the logits before the softmax, ``attn_bias = log P`` broadcast over memory positions,
  shifts every logit of query j by the same constant, which the softmax over memory positions removes: it equals the
  renormalised product, i.e. the plain read, exactly. It is therefore *not* a numerically safer equivalent of the
  unnormalised product for any matcher whose softmax runs over memory positions (STM, AOT's long-term attention,
  SITVOS's cross-attention); the two agree only when P = 1. ``form="log_bias"`` is kept for matchers whose softmax
  runs over query positions and for completeness, and a test documents that it is the identity on STM's read;
- ``form="logit_scale"`` is the other reading of "multiplication with the correlation map" (before the softmax):
  the logits of query j are multiplied by P_j (a per-query inverse temperature, computed by scaling the query key),
  which changes how sharply query j matches, not how much it reads.

Layouts: memory keys (B, C_k, T, H, W), values (B, C_v, T, H, W); query keys (B, C_k, H, W); masks (B, 1, H, W) or
(B, H, W); the prior (B, 1, H, W). :func:`prior_attn_bias` turns a prior into the (B, HW, 1) query-major bias of
:func:`voszoo.layers.memory_read.space_time_memory_read` / ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.layers.memory_read import memory_affinity

__all__ = [
    "MotionGuidedPrior",
    "gaussian_mask_prior",
    "motion_guided_affinity",
    "motion_guided_memory_read",
    "prior_attn_bias",
]

PriorForm = Literal["multiply", "log_bias", "logit_scale"]
Positivity = Literal["none", "softplus", "clamp"]
FORMS: tuple[str, ...] = ("multiply", "log_bias", "logit_scale")
POSITIVITY: tuple[str, ...] = ("none", "softplus", "clamp")


def gaussian_mask_prior(
    mask: Tensor,
    *,
    spread_scale: float = 1.0,
    min_sigma: float = 1.0,
    min_mass: float = 1.0,
) -> Tensor:
    """A 2-D axis-aligned Gaussian heat map fitted to a (soft) mask by its first and second moments (MGA Sec. 2.1).

    mask: (..., H, W) non-negative weights (probabilities; a 0-1 mask is the paper's case). Returns (..., H, W) in
    the mask's floating dtype (at least float32), values in (0, 1], peak 1 at the centre.

    The rule (pixel (y, x) at integer coordinates of the mask's own grid, w the mask, m = sum w its mass):

    - centre mu = sum w * (y, x) / m; variances var_y = sum w (y - mu_y)^2 / m, var_x likewise (weighted moments,
      so soft masks weight pixels by probability);
    - spread sigma_y^2 = (spread_scale^2) var_y + min_sigma^2 (likewise x): ``spread_scale`` widens or narrows the
      fitted Gaussian, ``min_sigma`` (in pixels of this grid) keeps a single pixel from giving a zero-width peak
      and keeps the spread differentiable;
    - G(y, x) = exp(-(y - mu_y)^2 / (2 sigma_y^2) - (x - mu_x)^2 / (2 sigma_x^2));
    - emptiness (the paper: an all-zero mask gives all ones) is blended, not thresholded, so that the map is a
      continuous function of soft masks: with alpha = min(m / min_mass, 1), the output is alpha G + (1 - alpha).
      An all-zero mask gives exactly 1 everywhere; any mask with mass >= ``min_mass`` gives the pure Gaussian. The
      blend also bounds the gradient of the centre (1 / m) by 1 / min_mass.

    For a uniform h-row block the variance is (h^2 - 1) / 12. OSMN (Yang et al. CVPR 2018, "[11]") uses robust
    moments instead (median, 1.4826 x median absolute deviation, std >= 5 image pixels) and returns zeros for an
    empty mask; the mean/variance rule here works on soft masks and is differentiable.
    """
    if mask.ndim < 2:
        raise ValueError(f"gaussian_mask_prior: mask must be (..., H, W), got {tuple(mask.shape)}")
    _check_fit(spread_scale, min_sigma, min_mass, "gaussian_mask_prior")
    w = mask.to(torch.promote_types(mask.dtype, torch.float32)) if mask.is_floating_point() else mask.float()
    height, width = w.shape[-2:]
    ys = torch.arange(height, dtype=w.dtype, device=w.device).view(height, 1)
    xs = torch.arange(width, dtype=w.dtype, device=w.device).view(1, width)
    mass = w.sum(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    safe = mass.clamp_min(torch.finfo(w.dtype).tiny)
    mu_y = (w * ys).sum(dim=(-2, -1), keepdim=True) / safe
    mu_x = (w * xs).sum(dim=(-2, -1), keepdim=True) / safe
    var_y = (w * (ys - mu_y) ** 2).sum(dim=(-2, -1), keepdim=True) / safe
    var_x = (w * (xs - mu_x) ** 2).sum(dim=(-2, -1), keepdim=True) / safe
    sigma2_y = spread_scale**2 * var_y + min_sigma**2
    sigma2_x = spread_scale**2 * var_x + min_sigma**2
    fitted = torch.exp(-((ys - mu_y) ** 2) / (2 * sigma2_y) - (xs - mu_x) ** 2 / (2 * sigma2_x))
    alpha = (mass / min_mass).clamp(max=1.0)
    return alpha * fitted + (1.0 - alpha)


def _check_fit(spread_scale: float, min_sigma: float, min_mass: float, where: str) -> None:
    if spread_scale < 0 or min_sigma <= 0 or min_mass <= 0:
        raise ValueError(
            f"{where}: need spread_scale >= 0, min_sigma > 0 and min_mass > 0, got "
            f"spread_scale={spread_scale}, min_sigma={min_sigma}, min_mass={min_mass}"
        )


def prior_attn_bias(prior: Tensor) -> Tensor:
    """A positive per-query prior as an additive logit bias: (B, 1, H, W) or (B, H, W) -> (B, H*W, 1) = log prior.

    The query-major layout of ``scaled_dot_product_attention`` / :func:`space_time_memory_read` (query positions on
    dim 1, broadcast over memory positions on dim 2). The prior must be > 0 (see :class:`MotionGuidedPrior`'s
    ``positivity``). Note (module docstring): over a softmax on memory positions this bias cancels exactly.
    """
    if prior.ndim not in (3, 4) or (prior.ndim == 4 and prior.shape[1] != 1):
        raise ValueError(f"prior_attn_bias: prior must be (B, 1, H, W) or (B, H, W), got {tuple(prior.shape)}")
    return prior.flatten(1).log().unsqueeze(-1)


def motion_guided_affinity(
    memory_key: Tensor, query_key: Tensor, prior: Tensor, *, renormalise: bool = False
) -> Tensor:
    """The explicit motion-guided affinity (MGA Sec. 2.1, Fig. 2): (B, HW_q, THW), query-major.

    A_ij = softmax_i(k^M_i . k^Q_j / sqrt(C_k)) (STM's read, :func:`voszoo.layers.memory_read.memory_affinity`),
    then A'_ij = A_ij P_j with the prior ``prior`` (B, 1, H_q, W_q) of query position j. ``renormalise=True`` divides
    each query's row by its sum over memory positions (which gives back A, since P_j is one scalar per row). The
    paper does not renormalise. Materialises the full matrix: for reference and inspection at key resolution.
    """
    if prior.ndim != 4 or prior.shape[1] != 1 or prior.shape[-2:] != query_key.shape[-2:]:
        raise ValueError(
            f"motion_guided_affinity: prior must be (B, 1, {query_key.shape[-2]}, {query_key.shape[-1]}) like the "
            f"query key {tuple(query_key.shape)}, got {tuple(prior.shape)}"
        )
    affinity = memory_affinity(memory_key, query_key) * prior.flatten(1).unsqueeze(-1).to(query_key.dtype)
    if renormalise:
        affinity = affinity / affinity.sum(dim=-1, keepdim=True)
    return affinity


def motion_guided_memory_read(
    memory_key: Tensor,
    memory_value: Tensor,
    query_key: Tensor,
    query_value: Tensor | None = None,
    *,
    prior: Tensor,
    renormalise: bool = False,
) -> Tensor:
    """STM's memory read through the explicit motion-guided affinity (:func:`motion_guided_affinity`).

    memory_key (B, C_k, T, H, W), memory_value (B, C_v, T, H, W), query_key (B, C_k, H_q, W_q), query_value
    (B, C_q, H_q, W_q) or None, prior (B, 1, H_q, W_q). Returns [read, query value] (B, C_v + C_q, H_q, W_q) like
    :func:`voszoo.layers.memory_read.space_time_memory_read` (read alone if ``query_value`` is None). The
    unnormalised result equals ``prior * read`` (:meth:`MotionGuidedPrior.modulated_read`, which never forms the
    (HW_q, THW) matrix).
    """
    affinity = motion_guided_affinity(memory_key, query_key, prior, renormalise=renormalise)
    values = memory_value.flatten(2).transpose(1, 2)  # (B, THW, C_v)
    read = (affinity @ values).transpose(1, 2).reshape(values.shape[0], values.shape[2], *query_key.shape[-2:])
    return read if query_value is None else torch.cat([read, query_value], dim=1)


Reader = Callable[..., Tensor]


class MotionGuidedPrior(nn.Module):
    """MGA's motion-guided prior P = W * Gauss(M_{n-1}) + b and its application to a memory read (Sec. 2.1).

    ``forward(query_key (B, C_k, h, w), previous_mask (B, 1, H', W') or (B, H', W')) -> prior (B, 1, h, w)``.
    The mask is one object's previous probability (per-object models batch objects into B); it is resized to the
    key's grid by area averaging when its size differs. The prior is matcher-agnostic: one value per query
    position (docs/methods/mga.md shows how other matchers use it).

    Args:
        key_channels: C_k of the query key.
        hidden_channels, kernel_size: the head concat(k_n, Gauss) -> (W, b) is conv(k) -> ReLU -> conv(k) with
            "same" padding. The paper says only that W and b are learned from the concatenation.
        form: how :meth:`modulated_read` applies the prior (see the module docstring):
            ``"multiply"`` (the paper): the softmax affinity times P per query column, not renormalised, computed
            as ``P * read``; ``"log_bias"``: ``attn_bias = log P`` before the softmax (equals the renormalised
            product, which over a softmax on memory positions is the plain read); ``"logit_scale"``: logits of
            query j times P_j (the query key scaled by P).
        positivity: map applied to W * Gauss + b. ``"none"`` (the paper: a linear combination, any sign);
            ``"softplus"``: softplus(.) floored at ``min_prior``; ``"clamp"``: clamp(., min=min_prior). ``log_bias``
            needs a positive prior, so it refuses ``"none"``.
        min_prior: the floor of the positive maps (keeps log P finite).
        spread_scale, min_sigma, min_mass: the Gaussian fit (:func:`gaussian_mask_prior`), in key-grid pixels.
        init_weight, init_bias: initial (W, b) everywhere: the head's last conv starts with zero weights and these
            biases. The default (0, 1) gives P = 1, i.e. the module starts as plain STM (a safe start from STM
            weights); (1, 0) starts from P = Gauss. The paper does not say.
    """

    def __init__(
        self,
        *,
        key_channels: int,
        hidden_channels: int = 32,
        kernel_size: int = 3,
        form: PriorForm = "multiply",
        positivity: Positivity = "none",
        min_prior: float = 1e-4,
        spread_scale: float = 1.0,
        min_sigma: float = 1.0,
        min_mass: float = 1.0,
        init_weight: float = 0.0,
        init_bias: float = 1.0,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"MotionGuidedPrior: unknown form {form!r}; valid forms: {', '.join(FORMS)}")
        if positivity not in POSITIVITY:
            raise ValueError(f"MotionGuidedPrior: unknown positivity {positivity!r}; valid: {', '.join(POSITIVITY)}")
        if form == "log_bias" and positivity == "none":
            raise ValueError(
                "MotionGuidedPrior: form='log_bias' adds log(prior) to the logits, so the prior must be positive: "
                "set positivity='softplus' or 'clamp'"
            )
        if min_prior <= 0:
            raise ValueError(f"MotionGuidedPrior: min_prior must be > 0, got {min_prior}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MotionGuidedPrior: kernel_size must be odd and >= 1, got {kernel_size}")
        _check_fit(spread_scale, min_sigma, min_mass, "MotionGuidedPrior")
        self.key_channels = key_channels
        self.form = form
        self.positivity = positivity
        self.min_prior = min_prior
        self.spread_scale = spread_scale
        self.min_sigma = min_sigma
        self.min_mass = min_mass
        pad = kernel_size // 2
        self.head = nn.Sequential(
            nn.Conv2d(key_channels + 1, hidden_channels, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, 2, kernel_size, padding=pad),
        )
        last = self.head[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([init_weight, init_bias]))

    def gaussian(self, previous_mask: Tensor, size: tuple[int, int]) -> Tensor:
        """Gauss(M_{n-1}) on a ``size`` grid: (B, 1, h, w) float32 or wider."""
        if previous_mask.ndim == 3:
            previous_mask = previous_mask.unsqueeze(1)
        if previous_mask.ndim != 4 or previous_mask.shape[1] != 1:
            raise ValueError(
                f"MotionGuidedPrior: previous_mask must be (B, 1, H, W) or (B, H, W), got {tuple(previous_mask.shape)}"
            )
        mask = previous_mask.to(torch.promote_types(previous_mask.dtype, torch.float32))
        if tuple(mask.shape[-2:]) != tuple(size):
            mask = F.interpolate(mask, size=size, mode="area")
        return gaussian_mask_prior(
            mask, spread_scale=self.spread_scale, min_sigma=self.min_sigma, min_mass=self.min_mass
        )

    def forward(self, query_key: Tensor, previous_mask: Tensor) -> Tensor:
        if query_key.ndim != 4 or query_key.shape[1] != self.key_channels:
            raise ValueError(
                f"MotionGuidedPrior: query_key must be (B, C_k={self.key_channels}, h, w), got {tuple(query_key.shape)}"
            )
        if previous_mask.shape[0] != query_key.shape[0]:
            raise ValueError(
                f"MotionGuidedPrior: previous_mask {tuple(previous_mask.shape)} and query_key "
                f"{tuple(query_key.shape)} differ in batch size"
            )
        gauss = self.gaussian(previous_mask, (query_key.shape[-2], query_key.shape[-1]))
        weight_bias = self.head(torch.cat([query_key, gauss.to(query_key.dtype)], dim=1))
        prior = weight_bias[:, :1] * gauss + weight_bias[:, 1:]  # P = W * Gauss + b, (B, 1, h, w)
        if self.positivity == "softplus":
            prior = F.softplus(prior).clamp_min(self.min_prior)
        elif self.positivity == "clamp":
            prior = prior.clamp_min(self.min_prior)
        return prior

    def modulated_read(
        self,
        reader: Reader,
        memory_key: Tensor,
        memory_value: Tensor,
        query_key: Tensor,
        query_value: Tensor | None = None,
        *,
        previous_mask: Tensor,
    ) -> Tensor:
        """Compute the prior and apply it to an STM-style read, per ``form``.

        ``reader(memory_key, memory_value, query_key, query_value, *, attn_bias=None) -> [read, query value]``
        (read alone when ``query_value`` is None), e.g. :class:`voszoo.layers.memory_read.SpaceTimeMemoryRead`;
        shapes as :func:`motion_guided_memory_read`; previous_mask (B, 1, H', W') one object's previous mask.
        Returns what the reader returns, modulated: only the read is scaled, never the query value.
        """
        prior = self(query_key, previous_mask)
        if self.form == "multiply":
            read = reader(memory_key, memory_value, query_key, None) * prior.to(query_key.dtype)
            return read if query_value is None else torch.cat([read, query_value], dim=1)
        if self.form == "log_bias":
            return reader(memory_key, memory_value, query_key, query_value, attn_bias=prior_attn_bias(prior))
        return reader(memory_key, memory_value, query_key * prior.to(query_key.dtype), query_value)

    def extra_repr(self) -> str:
        return (
            f"key_channels={self.key_channels}, form={self.form!r}, positivity={self.positivity!r}, "
            f"spread_scale={self.spread_scale}, min_sigma={self.min_sigma}, min_mass={self.min_mass}"
        )

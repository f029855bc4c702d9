"""BATMAN's bilateral attention as the short-term matcher of AOT's LSTT (``model=aot_s model/matcher=bilateral``).

Yu et al., "BATMAN", ECCV 2022 (shared/papers/000), Sec. 3.2, Eq. 1-3: for query token (h, w) the previous frame's
token (i, j) is kept iff it lies in the (2 W_d + 1)^2 window and the ranks of E_{h,w} and E_{i,j} among the window's
E values differ by at most W_b; kept logits get q.k / sqrt(d) + E_{i,j}. In AOT's LSTT block (Yang et al., NeurIPS
2021, shared/papers/001, Eq. 7) this replaces the short-term attention over the same previous-frame window, with the
same inputs: the block's query linear_Q(norm2(x)) of the current frame and the previous frame's memory key and value.

voszoo's choice where neither paper says: AOT has no optical flow, so the bilateral space encoding E is computed from
appearance alone, a 1x1 convolution of the current frame's query map to one scalar per token
(:class:`~voszoo.layers.bilateral.BilateralSpaceEncoder` with ``flow_channels=0``, BATMAN's ``flow=none`` variant),
one per block. BATMAN itself (:mod:`voszoo.models.batman`) encodes the calibrated flow beside the image. The window
comes from ``spatial_radius`` (W_d = 7: the 15 x 15 window of AOT's lambda = 15); the LSTT's ``window_size`` and
relative position embeddings belong to the default matcher and are not used.
"""

from __future__ import annotations

from torch import Tensor, nn

from voszoo.layers.bilateral import BilateralSpaceEncoder, MultiheadBilateralAttention

__all__ = ["BilateralShortTermAttention"]


class BilateralShortTermAttention(nn.Module):
    """Bilateral attention over the previous frame with an appearance-only encoding E (see the module docstring).

    Args:
        d_model: C, the LSTT width (given by the block). num_heads: heads (given by the block: its ``att_heads``).
        spatial_radius: W_d (7). bilateral_window: W_b (84). dropout: on the attention probabilities in training.
        backend: of :func:`voszoo.layers.local_attention.local_window_attention`.

    ``forward(query, key, value (B, C, h, w)) -> (B, h*w, C)``, the calling convention of
    :class:`~voszoo.layers.local_attention.MultiheadLocalAttention`; E = ``encoder(query)`` (B, 1, h, w).
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        spatial_radius: int = 7,
        bilateral_window: int = 84,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.encoder = BilateralSpaceEncoder(image_channels=d_model, flow_channels=0)
        self.attention = MultiheadBilateralAttention(
            d_model=d_model,
            num_heads=num_heads,
            spatial_radius=spatial_radius,
            bilateral_window=bilateral_window,
            attention="bilateral",
            dropout=dropout,
            backend=backend,
            use_linear=False,
        )

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return self.attention(query, key, value, self.encoder(query))

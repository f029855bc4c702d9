"""AOT's identification mechanism: the patch-wise identity bank (embedding) and identification decoding.

Yang, Wei and Yang, "Associating Objects with Transformers for Video Object Segmentation", NeurIPS 2021
(shared/papers/001), Sec. 4.1, Eq. 3-5, and App. A.1.1 "Patch-wise Identity Bank"; official code
github.com/yoxu515/aot-benchmark (``networks/models/aot.py``: ``patch_wise_id_bank``, ``_init_weight``;
``networks/engines/aot_engine.py``: ``assign_identity``, ``decode_current_logits``; ``utils/math.py``:
``generate_permute_matrix``).

- **Assignment (Eq. 3, the matrix P).** The N objects of a video get N distinct identities out of M. In training
  they are drawn at random for every sample and iteration ("we randomly reinitialize the identification selecting
  matrix P in each video sample and each optimization iteration"); at inference object i takes identity i (as the
  official engine, which only shuffles in training). The background keeps slot 0 (official ``keep_first=True``).
  An assignment is a (B, N+1) long tensor: ``assignment[b, i]`` is the bank slot of object i (0 = background).
- **Embedding (Eq. 3, E = Y P D).** The one-hot (or soft) mask over the N+1 classes is scattered to the M+1 bank
  slots by P, then a *patch-wise* bank D maps it to the LSTT grid: every identity holds one C-vector per pixel
  position in a patch, summed over the patch. The official code implements D as a convolution with M+1 input
  channels, kernel 17, stride 16, padding 8 (with ``MODEL_ALIGN_CORNERS``; the paper describes non-overlapping
  16x16 patches, i.e. kernel 16, padding 0, the official non-align-corners variant), with a bias, initialised
  orthogonally with gain 17^-2 (the weight viewed as C x (M+1)*17*17).
- **Decoding (Eq. 5, Y' = softmax(P L^D)).** The decoder predicts M+1 identity logits; P selects the assigned
  ones, in object order. Objects a sample does not have (a batch padded to its largest object count) get logit
  -1e10 (-1e4 in float16) before the softmax, as the official engine does for ids above ``obj_num``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IdentityBank", "assign_identities", "identity_decode", "identity_selection"]


def assign_identities(
    batch: int,
    num_objects: int,
    num_identities: int,
    *,
    shuffle: bool,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bank slots of background and objects: (B, N+1) long, column 0 = 0 (background), columns 1..N distinct slots
    in 1..M; random per sample with ``shuffle`` (training, Eq. 3), else object i -> slot i."""
    if not 0 <= num_objects <= num_identities:
        raise ValueError(
            f"assign_identities: num_objects must be in [0, {num_identities}] (the identity bank size), "
            f"got {num_objects}"
        )
    if not shuffle:
        return torch.arange(num_objects + 1, device=device).expand(batch, -1).clone()
    slots = [torch.randperm(num_identities, generator=generator)[:num_objects] + 1 for _ in range(batch)]
    foreground = torch.stack(slots) if slots else torch.zeros(0, num_objects, dtype=torch.long)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), foreground], dim=1).to(device)


def identity_selection(assignment: Tensor, num_identities: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The selection matrix P of Eq. 3 and 5: (B, N+1, M+1) with P[b, i, assignment[b, i]] = 1, zeros elsewhere."""
    if assignment.ndim != 2:
        raise ValueError(f"identity_selection: assignment must be (B, N+1), got {tuple(assignment.shape)}")
    if assignment.numel() and (int(assignment.min()) < 0 or int(assignment.max()) > num_identities):
        raise ValueError(f"identity_selection: assignment slots must be in [0, {num_identities}]")
    return F.one_hot(assignment.long(), num_identities + 1).to(dtype)


def identity_decode(id_logits: Tensor, assignment: Tensor, *, num_objects: Tensor | None = None) -> Tensor:
    """Identification decoding (Eq. 5): select the assigned identities' logits in object order.

    Args:
        id_logits: (B, M+1, H, W) logits of every bank slot (slot 0 = background).
        assignment: (B, N+1) bank slot of background and of each object (see :func:`assign_identities`).
        num_objects: (B,) objects each sample really has (<= N); columns beyond get -1e10 (-1e4 in float16), so
            their softmax probability is 0. None: every sample has N.

    Returns:
        (B, N+1, H, W) logits, background first.
    """
    if id_logits.ndim != 4 or assignment.ndim != 2 or assignment.shape[0] != id_logits.shape[0]:
        raise ValueError(
            f"identity_decode: id_logits must be (B, M+1, H, W) and assignment (B, N+1) with the same B, got "
            f"{tuple(id_logits.shape)} and {tuple(assignment.shape)}"
        )
    selection = identity_selection(assignment, id_logits.shape[1] - 1, dtype=id_logits.dtype)
    logits = torch.einsum("bnm,bmhw->bnhw", selection, id_logits)
    if num_objects is None:
        return logits
    num_objects = torch.as_tensor(num_objects, device=logits.device).long()
    if tuple(num_objects.shape) != (logits.shape[0],):
        raise ValueError(f"identity_decode: num_objects must be ({logits.shape[0]},), got {tuple(num_objects.shape)}")
    unused = torch.arange(logits.shape[1], device=logits.device)[None, :] > num_objects[:, None]  # (B, N+1)
    fill = -1e10 if torch.finfo(logits.dtype).max > 1e10 else -1e4
    return logits.masked_fill(unused[:, :, None, None], fill)


class IdentityBank(nn.Module):
    """Patch-wise identity bank D (Sec. 4.1 Eq. 3, App. A.1.1) with M = ``num_identities`` identities.

    Args:
        num_identities: M (10 in AOT: the largest object count of the benchmarks).
        embed_dim: C, the LSTT width.
        kernel_size, stride, padding: the patch geometry (official align-corners setting 17 / 16 / 8; 16 / 16 / 0 is
            the paper's non-overlapping patches).
        init_gain: gain of the orthogonal initialisation; None = kernel_size ** -2 (official).

    Parameters ``weight`` (C, M+1, k, k) and ``bias`` (C,) are named as the official ``patch_wise_id_bank``
    convolution, so ``AOT.patch_wise_id_bank`` state dicts load unchanged.

    ``forward(masks (B, N+1, H, W), assignment (B, N+1)) -> (B, C, h, w)`` with h = floor((H + 2p - k) / s) + 1
    (H / 16 for H a multiple of 16 with the official geometry): the identification embedding E of Eq. 3. ``masks``
    are one-hot or soft probabilities over background + N objects.
    """

    def __init__(
        self,
        *,
        num_identities: int = 10,
        embed_dim: int = 256,
        kernel_size: int = 17,
        stride: int = 16,
        padding: int = 8,
        init_gain: float | None = None,
    ) -> None:
        super().__init__()
        if num_identities < 1:
            raise ValueError(f"IdentityBank: num_identities must be >= 1, got {num_identities}")
        self.num_identities = num_identities
        self.embed_dim = embed_dim
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(embed_dim, num_identities + 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(embed_dim))
        self.reset_parameters(init_gain=init_gain)

    def reset_parameters(self, *, init_gain: float | None = None) -> None:
        """Official init: orthogonal rows of the (C, (M+1) k k) weight matrix with gain k^-2; bias as nn.Conv2d."""
        gain = self.kernel_size**-2 if init_gain is None else init_gain
        with torch.no_grad():
            matrix = torch.empty(self.embed_dim, self.weight[0].numel())
            nn.init.orthogonal_(matrix, gain=gain)
            self.weight.copy_(matrix.view_as(self.weight))
            bound = 1.0 / self.weight[0].numel() ** 0.5  # nn.Conv2d's default bias init
            nn.init.uniform_(self.bias, -bound, bound)

    def assign(
        self, batch: int, num_objects: int, *, shuffle: bool, device=None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, N+1) bank slots; see :func:`assign_identities`."""
        return assign_identities(
            batch, num_objects, self.num_identities, shuffle=shuffle, device=device, generator=generator
        )

    def scatter(self, masks: Tensor, assignment: Tensor) -> Tensor:
        """Y P of Eq. 3: (B, N+1, H, W) class masks -> (B, M+1, H, W) bank-slot masks (unassigned slots are 0)."""
        if masks.ndim != 4 or assignment.shape != masks.shape[:2]:
            raise ValueError(
                f"IdentityBank: masks must be (B, N+1, H, W) and assignment (B, N+1) alike, got "
                f"{tuple(masks.shape)} and {tuple(assignment.shape)}"
            )
        selection = identity_selection(assignment, self.num_identities, dtype=masks.dtype)
        return torch.einsum("bnm,bnhw->bmhw", selection, masks)

    def forward(self, masks: Tensor, assignment: Tensor) -> Tensor:
        slots = self.scatter(masks, assignment)
        return F.conv2d(slots, self.weight.to(slots.dtype), self.bias.to(slots.dtype), self.stride, self.padding)

    def decode(self, id_logits: Tensor, assignment: Tensor, *, num_objects: Tensor | None = None) -> Tensor:
        """Eq. 5; see :func:`identity_decode`."""
        if id_logits.shape[1] != self.num_identities + 1:
            raise ValueError(
                f"IdentityBank.decode: id_logits must have M+1 = {self.num_identities + 1} channels, got "
                f"{id_logits.shape[1]}"
            )
        return identity_decode(id_logits, assignment, num_objects=num_objects)

    def extra_repr(self) -> str:
        return (
            f"num_identities={self.num_identities}, embed_dim={self.embed_dim}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )

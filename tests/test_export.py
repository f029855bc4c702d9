"""torch.export with dynamic H and W: AOT's LSTT (default tiled local attention) and STM's memory read export once and
run at other sizes, matching eager. Sizes below, at and above the local-attention tile (8) are in the range. With
``voszoo[onnx]`` installed, the local attention also goes through ``torch.onnx.export(dynamo=True)`` and onnxruntime."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.export import Dim, export

from voszoo.layers import LSTT, MultiheadLocalAttention, SpaceTimeMemoryRead
from voszoo.layers.lstt import map_to_tokens, tokens_to_map

H, W = Dim("H", min=2, max=64), Dim("W", min=2, max=64)


class LSTTOnMaps(nn.Module):
    """The LSTT in reference mode on maps: ``forward(x (B, C, H, W), id_emb (B, C, H, W)) -> (B, C, H, W)``; the token
    grid size comes from the input's shape, so it is symbolic when exported."""

    def __init__(self) -> None:
        super().__init__()
        self.lstt = LSTT(
            num_layers=2, d_model=32, self_heads=2, att_heads=2, dim_feedforward=64, window_size=5, gn_groups=4
        )

    def forward(self, x: Tensor, id_emb: Tensor) -> Tensor:
        size = (x.shape[2], x.shape[3])
        outputs, _ = self.lstt(map_to_tokens(x), size=size, id_emb=map_to_tokens(id_emb))
        return tokens_to_map(outputs[-1], size)


def _check_sizes(exported: nn.Module, eager: nn.Module, make_inputs, sizes: list[tuple[int, int]]) -> None:
    for size in sizes:
        inputs = make_inputs(*size)
        torch.testing.assert_close(exported(*inputs), eager(*inputs), atol=1e-5, rtol=1e-4, msg=f"size {size}")


@torch.no_grad()
def test_lstt_exports_with_dynamic_height_and_width() -> None:
    torch.manual_seed(0)
    model = LSTTOnMaps().eval()

    def inputs(h: int, w: int) -> tuple[Tensor, Tensor]:
        return torch.randn(1, 32, h, w), torch.randn(1, 32, h, w)

    program = export(model, inputs(12, 10), dynamic_shapes=({2: H, 3: W}, {2: H, 3: W}))
    _check_sizes(
        program.module(), model, inputs, [(5, 7), (17, 9), (2, 64), (16, 8)]
    )  # <1 tile; partial; range ends; full tiles


@torch.no_grad()
def test_memory_read_exports_with_dynamic_height_and_width() -> None:
    torch.manual_seed(0)
    reader = SpaceTimeMemoryRead().eval()

    def inputs(h: int, w: int) -> tuple[Tensor, ...]:
        return (
            torch.randn(1, 16, 3, h, w),
            torch.randn(1, 24, 3, h, w),
            torch.randn(1, 16, h, w),
            torch.randn(1, 8, h, w),
        )

    spatial = {3: H, 4: W}
    program = export(reader, inputs(6, 9), dynamic_shapes=(spatial, spatial, {2: H, 3: W}, {2: H, 3: W}))
    _check_sizes(program.module(), reader, inputs, [(4, 5), (13, 11), (2, 64)])


@torch.no_grad()
def test_local_attention_onnx_export_runs_at_other_sizes(tmp_path) -> None:
    """The ONNX route of docs/export.md (``pip install voszoo[onnx]``, part of the test extra): the default tiled local
    attention exported with dynamic H, W runs in onnxruntime at sizes with other tile counts than the example's."""
    import onnxruntime as ort

    torch.manual_seed(0)
    attention = MultiheadLocalAttention(d_model=16, num_heads=2, window_size=5).eval()
    nn.init.normal_(attention.relative_emb_v)  # official init is zeros: make the relative-value term count

    def inputs(h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        return torch.randn(1, 16, h, w), torch.randn(1, 16, h, w), torch.randn(1, 16, h, w)

    spatial = {2: H, 3: W}
    program = torch.onnx.export(
        attention, inputs(12, 10), dynamo=True, dynamic_shapes=(spatial, spatial, spatial), verbose=False
    )
    path = tmp_path / "local_attention.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    for size in [(5, 7), (17, 9), (30, 54)]:
        q, k, v = inputs(*size)
        (out,) = session.run(None, dict(zip(names, (q.numpy(), k.numpy(), v.numpy()), strict=True)))
        torch.testing.assert_close(torch.from_numpy(out), attention(q, k, v), atol=1e-5, rtol=1e-4, msg=f"{size}")

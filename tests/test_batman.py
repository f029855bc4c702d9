"""BATMAN (shared/papers/000): flow sources, flow calibration, and the model's ablations on tiny clips."""

import copy

import pytest
import torch
from clips_util import tiny_clip
from torch import nn

from voszoo.decoders.fpn import FPNHead
from voszoo.layers.bilateral import BilateralTransformer
from voszoo.layers.flow import FlowCalibration, GroundTruthFlow, NoFlow, RAFTFlow
from voszoo.layers.identity import IdentityBank
from voszoo.losses import SegmentationCriterion
from voszoo.memory import EveryN
from voszoo.models.base import labels_to_probs
from voszoo.models.batman import BATMAN


class TinyEncoder(nn.Module):
    """Strided convs: (B, C_in, H, W) -> s4 (8 ch), s8 (8 ch), s16 (16 ch)."""

    def __init__(self, in_channels=3):
        super().__init__()
        self.channels = {"s4": 8, "s8": 8, "s16": 16}
        self.s4 = nn.Conv2d(in_channels, 8, 4, stride=4)
        self.s8 = nn.Conv2d(8, 8, 2, stride=2)
        self.s16 = nn.Conv2d(8, 16, 2, stride=2)

    def forward(self, x):
        s4 = self.s4(x)
        s8 = self.s8(s4)
        return {"s4": s4, "s8": s8, "s16": self.s16(s8)}


class SmoothFlow(nn.Module):
    """A deterministic stand-in for RAFT: a flow field that depends on the two images."""

    provides_flow = True

    def forward(self, previous, current):
        return (current - previous)[:, :2] * 3.0


def tiny_batman(*, flow=None, attention="bilateral", calibration=True, flow_loss_weight=1.0, **transformer_switches):
    torch.manual_seed(0)
    d, m = 16, 4
    return BATMAN(
        encoder=TinyEncoder(),
        transformer=BilateralTransformer(
            num_layers=1,
            d_model=d,
            self_heads=2,
            att_heads=2,
            dim_feedforward=32,
            spatial_radius=1,
            bilateral_window=3,
            attention=attention,
            **transformer_switches,
        ),
        decoder=FPNHead(
            in_channels=2 * d, out_channels=m + 1, hidden_channels=8, skip_channels=(16, 8, 8), gn_groups=2
        ),
        identity=IdentityBank(num_identities=m, embed_dim=d),
        flow=SmoothFlow() if flow is None else flow,
        flow_encoder=TinyEncoder(in_channels=2),
        calibration=FlowCalibration(mask_channels=m + 1, base_channels=4) if calibration else None,
        criterion=SegmentationCriterion(ce_weight=0.5, jaccard_weight=0.5),
        flow_loss_weight=flow_loss_weight,
    )


def test_calibration_has_11_conv_layers_and_trains_its_mse():
    torch.manual_seed(0)
    calib = FlowCalibration(mask_channels=3, base_channels=4)  # residual, as in BATMAN
    assert sum(isinstance(mod, nn.Conv2d) for mod in calib.modules()) == 11
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    flow = torch.stack([xx, yy])[None].repeat(2, 1, 1, 1)
    mask = torch.rand(2, 3, 16, 16)
    opt = torch.optim.Adam(calib.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = ((calib(flow, mask) - flow) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    residual = FlowCalibration(mask_channels=3, base_channels=8)
    with torch.no_grad():
        residual.out.weight.zero_()
        residual.out.bias.zero_()
    torch.testing.assert_close(residual(flow, mask), flow)  # residual: input + correction


class ConstantRAFT(nn.Module):
    """Records RAFT's inputs and returns a constant flow (3, -1) at the input resolution."""

    def forward(self, a, b, num_flow_updates=12):
        self.inputs = (a, b)
        flow = torch.zeros(a.shape[0], 2, *a.shape[-2:])
        flow[:, 0], flow[:, 1] = 3.0, -1.0
        return [flow]


def test_raft_flow_preprocessing_and_rescaling():
    source = RAFTFlow(variant="small", cpu_scale=0.5)
    source.raft = ConstantRAFT()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    white = (torch.ones(1, 3, 40, 24) - mean) / std  # [0, 1] image of ones -> 1 in RAFT's [-1, 1]
    flow = source(white, white)
    a, _ = source.raft.inputs
    assert a.shape[-2:] == (128, 128)  # 20 x 12 at half resolution, padded to RAFT's minimum 128
    torch.testing.assert_close(a, torch.ones_like(a))
    assert flow.shape == (1, 2, 40, 24)
    torch.testing.assert_close(flow[:, 0], torch.full((1, 40, 24), 6.0))  # half resolution: x2 in input pixels
    torch.testing.assert_close(flow[:, 1], torch.full((1, 40, 24), -2.0))


def test_raft_flow_is_frozen_and_loads_weights(tmp_path):
    torch.manual_seed(0)
    source = RAFTFlow(variant="small", num_flow_updates=2)
    assert not any(p.requires_grad for p in source.parameters())
    source.train()
    assert not source.raft.training
    path = tmp_path / "raft_small.pth"
    torch.save(source.raft.state_dict(), path)
    loaded = RAFTFlow(variant="small", weights=str(path), num_flow_updates=2)
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x, y), source(x, y))
    assert loaded(x, y).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="'no_such_weights': no such file .*model.flow.weights"):
        RAFTFlow(variant="small", weights="no_such_weights")
    with pytest.raises(ValueError, match="unknown variant"):
        RAFTFlow(variant="huge")


@pytest.mark.parametrize("variant", ["bilateral", "flow_none", "spatial_local", "no_calibration", "ground_truth"])
def test_ablations_forward_backward(variant):
    kwargs = {
        "bilateral": {},
        "flow_none": {"flow": NoFlow()},
        "spatial_local": {"attention": "spatial_local"},
        "no_calibration": {"calibration": False},
        "ground_truth": {"flow": GroundTruthFlow()},
    }[variant]
    model = tiny_batman(**kwargs)
    clip = tiny_clip()
    if variant == "ground_truth":
        clip.flows = torch.randn(2, 2, 2, 64, 64)
    out = model(clip)
    out["loss"].backward()
    assert out["logits"].shape == (2, 2, 3, 64, 64) and torch.isfinite(out["loss"])
    has_calibration = variant in ("bilateral", "ground_truth")
    assert ("loss_flow" in out) == has_calibration
    if has_calibration:
        assert model.calibration.out.weight.grad.abs().sum() > 0
    if variant != "spatial_local":
        assert model.bilateral_encoder.proj.weight.grad.abs().sum() > 0  # E is trained by SGD
    else:
        assert model.bilateral_encoder is None and model.flow_encoder is None
    if variant == "flow_none":
        assert model.flow_encoder is None and model.calibration is None


def test_flow_loss_reaches_total_and_chunks_sum_to_clip():
    model = tiny_batman(flow_loss_weight=2.0).eval()
    clip = tiny_clip()
    with torch.no_grad():
        out = model(clip)
        expected = 0.5 * out["loss_ce"] + 0.5 * out["loss_jaccard"] + 2.0 * out["loss_flow"]
        torch.testing.assert_close(out["loss"], expected)
        assert out["loss_flow"] > 0
        chunks = list(model.training_chunks(clip, chunk_frames=1))
    assert len(chunks) == 2
    torch.testing.assert_close(sum(c["loss_flow"] for c in chunks), out["loss_flow"])
    assert not hasattr(clip, "_batman_flow_log")  # the caller's clip is untouched


def test_ground_truth_flow_is_used_and_required():
    model = tiny_batman(flow=GroundTruthFlow()).eval()
    clip = tiny_clip()
    with pytest.raises(ValueError, match="no ground-truth flow"):
        model(clip)
    a, b = copy.copy(clip), copy.copy(clip)
    a.flows = torch.zeros(2, 2, 2, 64, 64)
    b.flows = torch.full((2, 2, 2, 64, 64), 5.0)
    with torch.no_grad():
        assert not torch.allclose(model(a)["logits"], model(b)["logits"])
    bad = copy.copy(clip)
    bad.flows = torch.zeros(2, 3, 2, 64, 64)
    with pytest.raises(ValueError, match="clip.flows"):
        model(bad)


def test_inference_loop_without_clip():
    model = tiny_batman().eval()
    clip = tiny_clip(void_corner=False)
    memory = model.new_memory(EveryN(n=9999), num_objects=2)
    with torch.no_grad():
        feats = model.encode(clip.images[:1, 0])
        model.memorize(memory, feats, labels_to_probs(clip.labels[:1, 0], 2), 0)
        for t in (1, 2):
            feats = model.encode(clip.images[:1, t])
            logits = model.segment(memory, feats)
            assert logits.shape == (1, 3, 64, 64) and torch.isfinite(logits).all()
            model.memorize(memory, feats, logits.softmax(1), t)
    assert len(memory.long_term) == 1  # reference only; the previous frame is the short-term entry


def test_constructor_errors():
    with pytest.raises(ValueError, match="flow_encoder"):
        BATMAN(
            encoder=TinyEncoder(),
            transformer=BilateralTransformer(num_layers=1, d_model=16, self_heads=2, att_heads=2, spatial_radius=1),
            decoder=FPNHead(in_channels=32, out_channels=5, hidden_channels=8, skip_channels=(16, 8, 8), gn_groups=2),
            identity=IdentityBank(num_identities=4, embed_dim=16),
            flow=SmoothFlow(),
        )


@pytest.mark.parametrize("multi_reference", [False, True])
def test_bilateral_attention_reads_the_previous_frame_or_every_memory_frame(multi_reference):
    """Sec. 3.2's paper reading (``multi_reference``): the bilateral attention reads every memory frame, the previous
    one once; the default reads the previous frame alone. Long-term memory every 2 frames after the reference."""
    model = tiny_batman(multi_reference=multi_reference, separate_key=True).eval()
    seen = []
    model.transformer.layers[0].bilateral_attn.register_forward_pre_hook(lambda _, args: seen.append(args[1].shape))
    images = torch.randn(5, 1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    memory = model.new_memory(EveryN(n=2), num_objects=2)
    with torch.no_grad():
        feats = model.encode(images[0])
        model.memorize(memory, feats, labels_to_probs(tiny_clip(void_corner=False).labels[:1, 0], 2), 0)
        seen.clear()  # the reference frame attends to itself
        for t in range(1, 5):
            feats = model.encode(images[t])
            model.memorize(memory, feats, model.segment(memory, feats).softmax(1), t)
    if multi_reference:
        # memory before frames 1..4: {0}, {0, prev 1}, {0, 2}, {0, 2, prev 3}
        assert [shape[2] for shape in seen] == [1, 2, 2, 3] and all(len(shape) == 5 for shape in seen)
    else:
        assert all(len(shape) == 4 for shape in seen) and len(seen) == 4


def test_paper_reading_trains_every_parameter():
    model = tiny_batman(multi_reference=True, separate_key=True)
    out = model(tiny_clip())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.transformer.layers[0].linear_K.weight.grad.abs().sum() > 0


# -- the paper recipe (Sec. 4.1): experiment=batman_paper_static, then experiment=batman_paper ----------------------
def compose_recipe(name, *overrides):
    from voszoo.hydra_compose import compose_config

    # data=static / davis_youtube point at folders that are not here; their numbers do not depend on them
    return compose_config("train", [f"experiment={name}", "data=toyvos", *overrides])


@pytest.mark.parametrize("stage", ["batman_paper_static", "batman_paper"])
def test_paper_recipe_states_the_papers_numbers(stage, tmp_path, monkeypatch):
    monkeypatch.setenv("VOSZOO_WEIGHTS", str(tmp_path))
    cfg = compose_recipe(stage)
    assert cfg.model.name == "batman" and cfg.model.transformer.num_layers == 12
    assert (cfg.trainer.batch_size, cfg.trainer.max_steps) == (16, 100_000)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 2e-4, 0.07)
    assert cfg.trainer.ema_decay == 0.9999
    assert cfg.model.transformer.multi_reference and cfg.model.transformer.separate_key  # Sec. 3.2, Eq. 3
    assert (
        cfg.model.criterion.bootstrap_ratio < 1 and cfg.model.criterion.jaccard_weight > 0
    )  # bootstrapped CE + Jaccard
    assert cfg.model.flow.variant == "large" and cfg.model.flow.weights == f"{tmp_path}/raft_large_C_T_V1-22a6c225.pth"
    assert bool(cfg.get("init_required")) == (stage == "batman_paper")
    # RAFT comes from a local file: a missing one is an error naming the override, never a download
    from voszoo.instantiate import build

    with pytest.raises(ValueError, match="no such file .*model.flow.weights"):
        build(cfg.model.flow, key="model.flow")

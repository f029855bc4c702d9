"""Official STM checkpoint -> voszoo STM: a synthetic checkpoint with the official keys and shapes
(tests/data/stm_state_dict_keys.txt, copied from shared/reference) must load completely and into the right tensors."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from voszoo.backbones import ResNetBackbone
from voszoo.decoders import RefineDecoder
from voszoo.engine.checkpoint import CheckpointError
from voszoo.layers import KeyValueProjection, SpaceTimeMemoryRead
from voszoo.memory import KeepAll
from voszoo.models.base import labels_to_probs
from voszoo.models.convert import CheckpointMismatchError, convert_stm_state_dict, load_official_stm
from voszoo.models.stm import STM

KEYS_FILE = Path(__file__).parent / "data" / "stm_state_dict_keys.txt"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# 2 x ResNet-50 to layer3 (8,543,296 each) + conv1_m/conv1_o (2 x 3,136) + 2 x key/value (5,898,880 each) + decoder
OFFICIAL_PARAMETERS = 2 * 8_543_296 + 2 * 3_136 + 2 * 5_898_880 + 10_034_946


def official_keys():
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        name, shape = line.split("\t")
        rows.append((name, tuple(ast.literal_eval(shape))))
    return rows


def synthetic_checkpoint(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_keys():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.randint(1, 10_000, shape, generator=g)
        else:
            state[name] = torch.randn(shape, generator=g)
    for encoder in ("Encoder_M", "Encoder_Q"):  # the official buffers hold the ImageNet constants
        state[f"module.{encoder}.mean"] = IMAGENET_MEAN.clone()
        state[f"module.{encoder}.std"] = IMAGENET_STD.clone()
    return state


def official_size_stm():
    return STM(
        memory_encoder=ResNetBackbone(depth=50, extra_input_channels=2),
        query_encoder=ResNetBackbone(depth=50),
        memory_key_value=KeyValueProjection(),
        query_key_value=KeyValueProjection(),
        reader=SpaceTimeMemoryRead(),
        decoder=RefineDecoder(),
    )


@pytest.fixture(scope="module")
def model():
    return official_size_stm()


@pytest.fixture(scope="module")
def checkpoint():
    return synthetic_checkpoint()


def test_key_list_is_the_official_one():
    rows = official_keys()
    assert len(rows) == 558
    assert rows[0] == ("module.Encoder_M.mean", (1, 3, 1, 1))
    assert ("module.Decoder.pred2.weight", (2, 256, 3, 3)) in rows


def test_official_size_parameter_count(model):
    count = sum(p.numel() for p in model.parameters())
    assert count == OFFICIAL_PARAMETERS == 38_925_570
    assert round(count / 1e6, 1) == 38.9


def test_full_checkpoint_loads_into_the_right_tensors(model, checkpoint):
    report = load_official_stm(model, checkpoint)
    assert report.ok, str(report)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.stripped_prefix == "module."
    assert sorted(report.accounted) == [f"{e}.{b}" for e in ("Encoder_M", "Encoder_Q") for b in ("mean", "std")]
    assert report.num_parameters == 38_925_570
    c = checkpoint
    own = model.state_dict()
    pairs = {
        "memory_encoder.conv1.weight": "module.Encoder_M.conv1.weight",
        "memory_encoder.layer1.0.downsample.1.running_mean": "module.Encoder_M.res2.0.downsample.1.running_mean",
        "memory_encoder.layer3.5.conv3.weight": "module.Encoder_M.res4.5.conv3.weight",
        "query_encoder.layer2.3.bn2.num_batches_tracked": "module.Encoder_Q.res3.3.bn2.num_batches_tracked",
        "query_encoder.bn1.running_var": "module.Encoder_Q.bn1.running_var",
        "memory_key_value.key.weight": "module.KV_M_r4.Key.weight",
        "query_key_value.value.bias": "module.KV_Q_r4.Value.bias",
        "decoder.fuse.weight": "module.Decoder.convFM.weight",
        "decoder.res.conv2.bias": "module.Decoder.ResMM.conv2.bias",
        "decoder.refines.0.conv_skip.weight": "module.Decoder.RF3.convFS.weight",
        "decoder.refines.0.res_out.conv1.weight": "module.Decoder.RF3.ResMM.conv1.weight",
        "decoder.refines.1.res_skip.conv2.weight": "module.Decoder.RF2.ResFS.conv2.weight",
        "decoder.pred.bias": "module.Decoder.pred2.bias",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(own[ours], c[theirs]), ours
    extra = own["memory_encoder.conv1_extra.weight"]
    assert torch.equal(extra[:, 0:1], c["module.Encoder_M.conv1_m.weight"])
    assert torch.equal(extra[:, 1:2], c["module.Encoder_M.conv1_o.weight"])
    # every number of the checkpoint (but the normalisation buffers) is somewhere in the model, and nothing else is
    official_numel = sum(
        v.numel() for k, v in c.items() if not k.endswith((".Encoder_M.mean", "_M.std", "_Q.mean", "_Q.std"))
    )
    assert official_numel == sum(v.numel() for v in own.values())


def test_without_module_prefix(model, checkpoint):
    plain = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    report = load_official_stm(model, plain)
    assert report.ok and report.stripped_prefix is None
    assert torch.equal(model.state_dict()["decoder.pred.weight"], plain["Decoder.pred2.weight"])


def test_converter_alone_maps_every_key(checkpoint):
    converted, report = convert_stm_state_dict(checkpoint)
    assert len(report.mapped) + 2 + len(report.accounted) == len(checkpoint)
    assert report.merged == {
        "memory_encoder.conv1_extra.weight": ("Encoder_M.conv1_m.weight", "Encoder_M.conv1_o.weight")
    }
    assert report.unexpected == [] and len(converted) == len(report.mapped) + 1


def test_mis_shaped_key_raises_and_leaves_model_untouched(model, checkpoint):
    bad = dict(checkpoint)
    bad["module.Decoder.RF2.convFS.weight"] = torch.zeros(256, 128, 3, 3)
    before = model.decoder.fuse.weight.detach().clone()
    bad["module.Decoder.convFM.weight"] = torch.full((256, 1024, 3, 3), 3.0)
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.refines\.1\.conv_skip\.weight.*\[256, 256, 3, 3\]"):
        load_official_stm(model, bad)
    assert torch.equal(model.decoder.fuse.weight, before)


def test_extra_key_raises_with_its_name_and_non_strict_reports_it(model, checkpoint):
    bad = dict(checkpoint)
    bad["module.Decoder.pred3.weight"] = torch.zeros(2, 256, 3, 3)
    with pytest.raises(CheckpointMismatchError, match=r"Decoder\.pred3\.weight"):
        load_official_stm(model, bad)
    with pytest.warns(UserWarning, match="pred3"):
        report = load_official_stm(model, bad, strict=False)
    assert report.unexpected == ["Decoder.pred3.weight"]
    assert torch.equal(model.decoder.pred.weight, checkpoint["module.Decoder.pred2.weight"])


def test_missing_key_raises_with_its_name(model, checkpoint):
    bad = dict(checkpoint)
    del bad["module.KV_Q_r4.Key.bias"]
    del bad["module.Encoder_M.conv1_o.weight"]  # an incomplete merge: conv1_m unexpected, conv1_extra missing
    with pytest.raises(CheckpointMismatchError) as error:
        load_official_stm(model, bad)
    message = str(error.value)
    assert "missing (not in checkpoint): query_key_value.key.bias" in message
    assert "missing (not in checkpoint): memory_encoder.conv1_extra.weight" in message
    assert "unexpected (no voszoo name): Encoder_M.conv1_m.weight" in message


def test_non_imagenet_normalisation_is_a_conflict(model, checkpoint):
    bad = dict(checkpoint)
    bad["module.Encoder_Q.std"] = torch.ones(1, 3, 1, 1)
    with pytest.raises(CheckpointMismatchError, match=r"Encoder_Q\.std"):
        load_official_stm(model, bad)


def test_checkpoint_of_another_model_is_rejected(model):
    aot_like = {
        "module.encoder.features.0.0.weight": torch.zeros(32, 3, 3, 3),
        "module.LSTT.layers.0.self_attn.linear_Q.weight": torch.zeros(256, 256),
    }
    with pytest.raises(CheckpointMismatchError, match="not an official STM checkpoint"):
        load_official_stm(model, aot_like, strict=False)
    with pytest.raises(CheckpointMismatchError, match="not a state dict"):
        load_official_stm(model, {"epoch": 3})


def test_smaller_model_gets_every_mismatch_listed(checkpoint):
    small = STM(
        memory_encoder=ResNetBackbone(depth=18, extra_input_channels=2),
        query_encoder=ResNetBackbone(depth=18),
        memory_key_value=KeyValueProjection(in_channels=256),
        query_key_value=KeyValueProjection(in_channels=256),
        reader=SpaceTimeMemoryRead(),
        decoder=RefineDecoder(skip_channels=(128, 64)),
    )
    with pytest.raises(CheckpointMismatchError) as error:
        load_official_stm(small, checkpoint)
    message = str(error.value)
    assert "mis-shaped: memory_key_value.key.weight model [128, 256, 3, 3] vs checkpoint [128, 1024, 3, 3]" in message
    assert "memory_encoder.conv1.weight" not in message  # same shape in ResNet-18 and -50
    assert "not used by the model: Encoder_M.res2.0.conv3.weight (-> memory_encoder.layer1.0.conv3.weight" in message
    assert "missing (not in checkpoint): decoder.refines.0.conv_skip.weight" not in message


def test_loads_from_a_file(tmp_path, model, checkpoint):
    decoder_only = {k: v for k, v in checkpoint.items() if ".Decoder." in k}
    path = tmp_path / "STM_weights.pth"
    torch.save(decoder_only, path)
    with pytest.warns(UserWarning, match="missing"):
        report = load_official_stm(model, path, strict=False)
    assert report.source == str(path)
    assert "query_encoder.conv1.weight" in report.missing
    assert torch.equal(model.decoder.refines[1].conv_skip.bias, checkpoint["module.Decoder.RF2.convFS.bias"])
    with pytest.raises(CheckpointError, match=r"^official STM checkpoint .*absent\.pth: file not found"):
        load_official_stm(model, tmp_path / "absent.pth")


# -- end to end: the converted model computes what the official network computes ------------------------------------
class _OfficialResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _OfficialEncoder(nn.Module):
    """Encoder_M (with_masks) / Encoder_Q of the official model.py: normalises inside, torchvision ResNet-50 parts."""

    def __init__(self, with_masks):
        super().__init__()
        if with_masks:
            self.conv1_m = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
            self.conv1_o = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        resnet = ResNetBackbone(depth=50)  # for its torchvision parts only
        self.conv1, self.bn1, self.maxpool = resnet.conv1, resnet.bn1, resnet.maxpool
        self.res2, self.res3, self.res4 = resnet.layer1, resnet.layer2, resnet.layer3
        self.register_buffer("mean", IMAGENET_MEAN.clone())
        self.register_buffer("std", IMAGENET_STD.clone())

    def forward(self, frame, mask=None, other=None):
        x = self.conv1((frame - self.mean) / self.std)
        if mask is not None:
            x = x + self.conv1_m(mask[:, None]) + self.conv1_o(other[:, None])
        r2 = self.res2(self.maxpool(F.relu(self.bn1(x))))
        r3 = self.res3(r2)
        return self.res4(r3), r3, r2


class _OfficialKeyValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.Key = nn.Conv2d(1024, 128, 3, padding=1)
        self.Value = nn.Conv2d(1024, 512, 3, padding=1)


class _OfficialRefine(nn.Module):
    def __init__(self, inplanes):
        super().__init__()
        self.convFS = nn.Conv2d(inplanes, 256, 3, padding=1)
        self.ResFS = _OfficialResBlock(256)
        self.ResMM = _OfficialResBlock(256)

    def forward(self, f, pm):
        s = self.ResFS(self.convFS(f))
        return self.ResMM(s + F.interpolate(pm, scale_factor=2, mode="bilinear", align_corners=False))


class _OfficialDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.convFM = nn.Conv2d(1024, 256, 3, padding=1)
        self.ResMM = _OfficialResBlock(256)
        self.RF3 = _OfficialRefine(512)
        self.RF2 = _OfficialRefine(256)
        self.pred2 = nn.Conv2d(256, 2, 3, padding=1)

    def forward(self, r4, r3, r2):
        m2 = self.RF2(r2, self.RF3(r3, self.ResMM(self.convFM(r4))))
        return F.interpolate(self.pred2(F.relu(m2)), scale_factor=4, mode="bilinear", align_corners=False)


class _OfficialSTM(nn.Module):
    """The official STM forward (single video, batch 1) written from model.py, for an end-to-end check."""

    def __init__(self):
        super().__init__()
        self.Encoder_M = _OfficialEncoder(True)
        self.Encoder_Q = _OfficialEncoder(False)
        self.KV_M_r4 = _OfficialKeyValue()
        self.KV_Q_r4 = _OfficialKeyValue()
        self.Decoder = _OfficialDecoder()

    def memorize(self, frame, masks, num_objects):  # masks (1, K, H, W), K = objects + background
        ms = [masks[:, o] for o in range(1, num_objects + 1)]
        os_ = [
            (masks[:, 1:o].sum(1) + masks[:, o + 1 : num_objects + 1].sum(1)).clamp(0, 1)
            for o in range(1, num_objects + 1)
        ]
        r4, _, _ = self.Encoder_M(frame.expand(num_objects, -1, -1, -1), torch.cat(ms), torch.cat(os_))
        return self.KV_M_r4.Key(r4), self.KV_M_r4.Value(r4)  # (no, C, h, w)

    def segment(self, frame, keys, values, num_objects):  # keys (no, C, T, h, w)
        r4, r3, r2 = self.Encoder_Q(frame)
        k4, v4 = self.KV_Q_r4.Key(r4), self.KV_Q_r4.Value(r4)
        b, ck, t, h, w = keys.shape
        p = torch.bmm(keys.reshape(b, ck, -1).transpose(1, 2), k4.expand(b, -1, -1, -1).reshape(b, ck, -1))
        p = torch.softmax(p / math.sqrt(ck), dim=1)
        mem = torch.bmm(values.reshape(b, values.shape[1], -1), p).reshape(b, -1, h, w)
        m4 = torch.cat([mem, v4.expand(b, -1, -1, -1)], dim=1)
        logits = self.Decoder(m4, r3.expand(b, -1, -1, -1), r2.expand(b, -1, -1, -1))
        ps = torch.softmax(logits, dim=1)[:, 1]
        em = torch.cat([torch.prod(1 - ps, dim=0, keepdim=True), ps]).clamp(1e-7, 1 - 1e-7)[None]
        return torch.log(em / (1 - em))


def test_converted_model_computes_the_official_forward():
    torch.manual_seed(0)
    official = nn.Module()
    official.module = _OfficialSTM()
    for module in official.modules():  # non-trivial batch-norm statistics, so that a wrong mapping shows
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = official.state_dict()
    assert sorted((k, tuple(v.shape)) for k, v in state.items()) == sorted(official_keys())
    model = official_size_stm()
    assert load_official_stm(model, state).ok
    official.double().eval()  # float64: saturated logits (p near 1) would amplify float32 rounding
    model.double().eval()

    g = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 1, 3, 32, 48, generator=g, dtype=torch.float64)  # official inputs: RGB in [0, 1]
    labels = torch.zeros(1, 32, 48, dtype=torch.long)
    labels[:, 4:15, 5:20] = 1
    labels[:, 17:30, 10:45] = 2
    probs = labels_to_probs(labels, 2).double()
    with torch.no_grad():
        key, value = official.module.memorize(frames[0], probs, 2)
        expected = official.module.segment(frames[1], key[:, :, None], value[:, :, None], 2)
        memory = model.new_memory(KeepAll(), num_objects=2)
        normalised = (frames - IMAGENET_MEAN.double()) / IMAGENET_STD.double()
        model.memorize(memory, model.encode(normalised[0]), probs, 0)
        got = model.segment(memory, model.encode(normalised[1]))
    assert got.shape == expected.shape == (1, 3, 32, 48)
    torch.testing.assert_close(got, expected.to(got.dtype), atol=1e-6, rtol=1e-6)

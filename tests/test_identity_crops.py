"""benchmarks/identity_crops.py: which crops it keeps and how it renumbers their objects."""

import importlib.util
from pathlib import Path

import torch

_SPEC = importlib.util.spec_from_file_location(
    "identity_crops", Path(__file__).parents[1] / "benchmarks" / "identity_crops.py"
)
identity_crops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(identity_crops)


def test_crops_keep_two_object_windows_and_renumber_ids_in_order() -> None:
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 0, 0] = 7  # top-left quadrant: objects 7 and 3
    labels[:, 1, 1] = 3
    labels[:, 6, 6] = 5  # bottom-right quadrant: one object only
    labels[:, 2, 2] = 255
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    crops = identity_crops.crop_clips(images, labels, size=4)
    assert len(crops) == 1  # of the 9 windows (stride 2), only the top-left one holds two objects in frame 0
    image, label = crops[0]
    torch.testing.assert_close(image, images[..., :4, :4])
    assert label[0, 0, 0] == 2 and label[0, 1, 1] == 1 and label[0, 2, 2] == 255  # 3 -> 1, 7 -> 2, void kept
    assert set(label.unique().tolist()) == {0, 1, 2, 255}


def test_slot_cosines_see_the_bias_dominated_official_init_and_a_distinct_large_one() -> None:
    from voszoo.layers.identity import IdentityBank

    torch.manual_seed(0)
    official = identity_crops.slot_cosines(IdentityBank(num_identities=4, embed_dim=64))
    assert official["objects"][0] > 0.9  # gain 17^-2: every slot's embedding is the shared bias
    large = identity_crops.slot_cosines(IdentityBank(num_identities=4, embed_dim=64, init_gain=1.0))
    assert max(abs(v) for v in large["objects"]) < 0.6  # orthogonal rows at gain 1: slots nearly orthogonal


def test_head_affinity_is_each_heads_softmax():
    torch.manual_seed(0)
    query, key = torch.randn(5, 8), torch.randn(7, 8)
    affinity = identity_crops._head_affinity(query, key, 2)
    assert affinity.shape == (2, 5, 7)
    for head in range(2):
        q, k = query[:, head * 4 : (head + 1) * 4], key[:, head * 4 : (head + 1) * 4]
        expected = torch.softmax(q @ k.T / 2.0, dim=1)
        torch.testing.assert_close(affinity[head], expected)

"""The Python example in docs/using_layers.md runs as pasted and computes what its comments say."""

import re
from pathlib import Path

import torch

from voszoo.layers import memory_affinity

DOC = Path(__file__).parents[1] / "docs" / "using_layers.md"


def extract_python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_doc_has_one_python_example():
    blocks = extract_python_blocks(DOC.read_text())
    assert len(blocks) == 1 and "import voszoo" in blocks[0].replace("from voszoo", "import voszoo")


def test_doc_example_runs_and_matches_its_comments(capsys):
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(extract_python_blocks(DOC.read_text())[0], str(DOC), "exec"), namespace)
    B, C_v, h, w = (namespace[k] for k in ("B", "C_v", "h", "w"))
    assert namespace["read"].shape == (B, 2 * C_v, h, w)
    assert namespace["identities"].shape == (B, 256, h, w)
    assert namespace["tokens"].shape == (B, h * w, 256)
    assert namespace["prior"].shape == (B, 1, h, w)
    assert "torch.Size" in capsys.readouterr().out

    # the read is softmax(q k / sqrt(C_k)) v, written out naively here
    mk, mv, qk, qv = (namespace[k] for k in ("memory_key", "memory_value", "query_key", "query_value"))
    logits = torch.einsum("bcthw,bcyx->byxthw", mk, qk).reshape(B, h * w, -1) / mk.shape[1] ** 0.5
    naive = (logits.softmax(-1) @ mv.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C_v, h, w)
    torch.testing.assert_close(namespace["read"][:, :C_v], naive, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(namespace["read"][:, C_v:], qv)
    assert memory_affinity(mk, qk).shape == (B, h * w, mk.shape[2] * h * w)

    # the doc says: a fresh MotionGuidedPrior is P = 1, so the guided read equals the plain read
    torch.testing.assert_close(namespace["prior"], torch.ones(B, 1, h, w))
    torch.testing.assert_close(namespace["guided"], namespace["read"], atol=1e-5, rtol=1e-4)

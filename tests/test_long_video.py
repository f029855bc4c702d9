"""A 300-frame ToyVOS video through STM under a max_frames cap: the memory stops growing once the cap is reached."""

from __future__ import annotations

import numpy as np
import torch

import voszoo
from voszoo.data.toy import render_toyvos_video
from voszoo.inference.memory import EveryN
from voszoo.inference.session import InferenceSession


def test_300_frame_video_runs_in_flat_memory_under_max_frames() -> None:
    video, _ = render_toyvos_video(seed=3, index=0, frames=300, size=(32, 32))
    frames, labels = video.frames, video.labels
    model = voszoo.create_model("stm_r18", **{"decoder.hidden_channels": 32})
    session = InferenceSession(model, policy_factory=lambda: EveryN(n=5, max_frames=4))
    held = []
    for t in range(300):
        result = session.step(np.asarray(frames[t]), np.asarray(labels[0]) if t == 0 else None)
        assert result.labels.shape == (32, 32)
        memory = session.groups[0].memories[0]
        held.append(sum(v.numel() * v.element_size() for e in memory.entries() for v in e.tensors.values()))
    memory = session.groups[0].memories[0]
    assert len(memory.long_term) == 4 and memory.long_term[0].frame_index == 0
    # from the time the cap is reached, memory alternates between 4 entries (the newest frame is long-term) and 5
    # (it is the extra short-term entry) and never grows
    assert max(held[25:]) == max(held[25:30]) and min(held[25:]) == min(held[25:30])
    assert max(held[25:]) == 5 * held[0]
    assert torch.isfinite(result.probs).all()

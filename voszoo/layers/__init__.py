"""voszoo's config-free building blocks (torch, einops; torchvision for RAFT). A public, stable import path.

Each layer cites the paper, section and equation it implements; see docs/components.md and docs/methods/.
"""

from voszoo.layers.aggregation import soft_aggregate
from voszoo.layers.bilateral import (
    BilateralTransformer,
    MultiheadBilateralAttention,
    bilateral_attention,
    bilateral_keep_mask,
)
from voszoo.layers.bilateral_matcher import BilateralShortTermAttention
from voszoo.layers.flow import FlowCalibration, RAFTFlow
from voszoo.layers.identity import IdentityBank, assign_identities, identity_decode, identity_selection
from voszoo.layers.interactive import AttentionBlock, InteractiveTransformer
from voszoo.layers.local_attention import MultiheadLocalAttention, local_window_attention
from voszoo.layers.lstt import LSTT, DropPath, LSTTBlock, MultiheadAttention, multihead_attention
from voszoo.layers.memory_read import KeyValueProjection, SpaceTimeMemoryRead, memory_affinity, space_time_memory_read
from voszoo.layers.motion_guided import (
    MotionGuidedPrior,
    gaussian_mask_prior,
    motion_guided_affinity,
    motion_guided_memory_read,
    prior_attn_bias,
)
from voszoo.layers.motion_uncertainty import (
    AdditiveFusion,
    MotionEnhancement,
    MotionFeatureNet,
    MotionSpatialAttention,
    MULayer,
    local_cost_volume,
    soft_argmin_displacement,
    window_max,
)
from voszoo.layers.position import SinePositionEmbedding, sine_position_embedding

__all__ = [
    "BilateralShortTermAttention",
    "BilateralTransformer",
    "FlowCalibration",
    "MultiheadBilateralAttention",
    "RAFTFlow",
    "bilateral_attention",
    "bilateral_keep_mask",
    "LSTT",
    "AdditiveFusion",
    "AttentionBlock",
    "DropPath",
    "IdentityBank",
    "InteractiveTransformer",
    "KeyValueProjection",
    "LSTTBlock",
    "MULayer",
    "MotionEnhancement",
    "MotionFeatureNet",
    "MotionGuidedPrior",
    "MotionSpatialAttention",
    "MultiheadAttention",
    "MultiheadLocalAttention",
    "SinePositionEmbedding",
    "SpaceTimeMemoryRead",
    "assign_identities",
    "gaussian_mask_prior",
    "identity_decode",
    "identity_selection",
    "local_cost_volume",
    "local_window_attention",
    "memory_affinity",
    "motion_guided_affinity",
    "motion_guided_memory_read",
    "multihead_attention",
    "prior_attn_bias",
    "sine_position_embedding",
    "soft_aggregate",
    "soft_argmin_displacement",
    "space_time_memory_read",
    "window_max",
]

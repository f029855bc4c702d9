"""Shared pytest set-up: tests import helpers from this folder and run single-threaded-friendly on 2 cores."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

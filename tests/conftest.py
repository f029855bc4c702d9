"""Shared pytest set-up: tests import helpers from this folder.

Torch runs single-threaded in the test process: on the 2-core machines a second intra-op thread gains little on
tiny inputs and, whenever anything else runs (a DataLoader worker, a subprocess test), oneDNN's spinning threads
make convolutions 10-30x slower.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

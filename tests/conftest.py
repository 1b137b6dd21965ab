import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton kernels run on CPU through the interpreter (set before triton.jit)
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

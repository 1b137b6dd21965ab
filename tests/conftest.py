import os
import sys
from pathlib import Path

import torch

# one thread per process: the suite is many small ops and subprocesses, where two threads per process
# oversubscribe two cores (a KV learning test took 240 s with two threads under load, 6 s with one)
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
if not torch.cuda.is_available():  # Triton kernels run on CPU through the interpreter (set before triton.jit)
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

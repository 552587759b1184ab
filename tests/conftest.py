import os

import torch

# 2-core CI machine: keep each test process on a fixed, small thread count (overridable).
torch.set_num_threads(int(os.environ.get("REPNAS_TEST_THREADS", "2")))

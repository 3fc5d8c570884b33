"""Test-wide settings.

One torch thread: the suite runs on 2-core CI machines where intra-op threads fight the
DataLoader and each other; one thread was ~30x less CPU time at the same wall time.
"""

import torch

torch.set_num_threads(1)

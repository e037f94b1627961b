"""validated_loss.distributed: vocab_parallel_cross_entropy, check_batch_consistency, bytes_per_row
(opt-in: imports torch.distributed). The code is in validated_loss/tools/distributed.py; this is its
public import path."""

from .tools.distributed import *  # noqa: F401,F403
from .tools.distributed import __all__  # noqa: F401

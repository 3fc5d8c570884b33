"""Process-group teardown shared by the commands that run under ``accelerate launch``."""

from __future__ import annotations


def end_process_group() -> None:
    """Barrier, then destroy the default process group (no-op in a single process).

    Exiting with the group alive lets the C++ side tear down under a live gloo thread; on a
    loaded machine one rank then aborts ("terminate called without an active exception")
    after its work is done, and the launcher reports the whole run as failed.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

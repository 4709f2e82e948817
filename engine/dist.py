"""Process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
import os

import torch
import torch.distributed as dist


def init_distributed(device='auto'):
    """Initialise torch.distributed when launched by torchrun with WORLD_SIZE > 1.

    NCCL on GPUs, gloo on CPU (so the multi-process path also runs in CI).
    Args:
        device (str): 'auto' (CUDA when available), 'cuda' or 'cpu'.
    Returns:
        (rank, world_size, torch.device)
    """
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was asked for but no GPU is visible (CUDA_VISIBLE_DEVICES?)')
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if device == 'cuda':
        torch.cuda.set_device(local_rank)
        torch_device = torch.device('cuda', local_rank)
    else:
        torch_device = torch.device('cpu')
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device == 'cuda' else 'gloo', init_method='env://')
    return rank, world_size, torch_device


def wrap_distributed(model, device, find_unused_parameters=False):
    """DDP over this process's device (see engine.parallel.OPSDistributedDataParallel)."""
    from engine.parallel import OPSDistributedDataParallel
    device_ids = [device.index] if device.type == 'cuda' else None
    return OPSDistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False,
                                      find_unused_parameters=find_unused_parameters)

"""DDP over two ranks with the training decoder replayed from CUDA graphs (the default of train.py on
CUDA): the gradients DDP leaves in `param.grad` after two accumulated backward passes per rank equal
the eager gradient of the four micro-batches, averaged over the ranks as DDP averages.

Two GPUs or more: NCCL, one GPU per rank, as train.py runs. One GPU: both ranks share cuda:0 under gloo
(NCCL refuses two ranks on one device; gloo all-reduces and broadcasts CUDA tensors through the host).
The graphs, DDP's bucketing and averaging and the accumulation are the same code in both; only the
transport of the sums differs. Skips without a GPU.

Gradients may differ by the rounding of the atomic additions in the sampling op's and cuDNN's backward and
of the all-reduce: an eager model computed twice measures that noise, and the graph must stay within 1e-4
or 4x it (as in test_train_step.py).
"""
import os

import numpy as np
import pytest
import torch

from accel import accelerate, parse_losses_lazy, policy_from_config
from accel.cuda_graph import EAGER, without_dropout
from dist_helpers import free_port
from tiny_detector import build, gt, images, metas_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

WORLD = 2
MICRO_BATCHES = 2    # per rank and step: gradient accumulation, as train.py on fewer GPUs than the total batch


def tiny_model(cuda_graph):
    built = accelerate(build(), policy_from_config(dict(train_cuda_graph=cuda_graph, checkpointing=False)))
    return without_dropout(built)


def losses(model, seed, device):
    np.random.seed(seed)                  # photometric distortion
    sem, mask = (t.to(device) for t in gt(1))
    img = torch.cat([images(1, seed=seed), images(0, seed=seed)])[None].to(device)
    return parse_losses_lazy(model(img=img, img_metas=[metas_for([1, 0])], voxel_semantics=sem,
                                   mask_camera=mask))[0]


def micro_batch_seed(rank, index):
    return rank * MICRO_BATCHES + index


def backend_and_devices():
    """('nccl', [cuda:0, cuda:1]) with two GPUs or more, else ('gloo', [cuda:0, cuda:0])."""
    if torch.cuda.device_count() >= WORLD:
        return 'nccl', [torch.device('cuda', rank) for rank in range(WORLD)]
    return 'gloo', [torch.device('cuda', 0)] * WORLD


def _rank(rank, port, state_path, out_path):
    backend, devices = backend_and_devices()
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), NCCL_NVLS_ENABLE='0')
    torch.distributed.init_process_group(backend, rank=rank, world_size=WORLD)
    try:
        device = devices[rank]
        torch.cuda.set_device(device)
        model = tiny_model(cuda_graph=True)
        model.load_state_dict(torch.load(state_path, map_location='cpu'))
        model = model.to(device).train()
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index], broadcast_buffers=False)
        grads = []
        for step in range(2):             # capture at the first call, replay at the second
            model.zero_grad(set_to_none=True)
            for index in range(MICRO_BATCHES):
                losses(ddp, 100 * step + micro_batch_seed(rank, index), device).backward()
            grads.append({n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
        graphs = list(model.graphed_steps['train_decoder'].graphs.values())
        if rank == 0:
            graphed = len(graphs) == 1 and graphs[0] is not EAGER
            torch.save(dict(grads=grads, graphed=graphed, backend=backend), out_path)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    """The two ranks' run (rank 0's gradients of both steps, whether the decoder was graphed) and the reference
    model whose state both ranks loaded."""
    tmp_path = tmp_path_factory.mktemp('ddp_graph')
    reference = tiny_model(cuda_graph=False)
    state_path, out_path = tmp_path / 'state.pth', tmp_path / 'grads.pth'
    torch.save(reference.state_dict(), state_path)
    torch.multiprocessing.spawn(_rank, args=(free_port(), str(state_path), str(out_path)), nprocs=WORLD)
    return torch.load(out_path), reference


def test_ddp_replays_the_training_decoder_from_a_graph(ddp_run):
    result, _ = ddp_run
    assert result['graphed'], 'the decoder was not replayed from a graph under DDP'


def test_ddp_with_the_graphed_decoder_accumulates_the_averaged_gradient(ddp_run):
    """Graphed or (after a failed capture) eager, the gradients DDP leaves are the averaged eager ones."""
    result, reference = ddp_run
    device = torch.device('cuda', 0)
    reference = reference.to(device).train()

    def eager_grads(step):
        reference.zero_grad(set_to_none=True)
        for rank in range(WORLD):
            for index in range(MICRO_BATCHES):
                (losses(reference, 100 * step + micro_batch_seed(rank, index), device) / WORLD).backward()
        return {n: p.grad.cpu() for n, p in reference.named_parameters() if p.grad is not None}

    def relative_differences(grads, ref):
        return {n: ((grads[n] - g).norm() / g.norm().clamp(min=1e-12)).item() for n, g in ref.items()}

    for step, graphed in enumerate(result['grads']):   # the weights stay put: both steps see the same model
        expected, again = eager_grads(step), eager_grads(step)
        assert graphed.keys() == expected.keys() and len(expected) > 50
        noise = max(relative_differences(again, expected).values())
        # 4 x the measured eager-vs-eager noise; the floor 1e-4 (~840 float32 eps) covers a noiseless measurement:
        # the all-reduce and the accumulation add the four micro-batch gradients in another order than the eager
        # loop (a few float32 eps of the sum of magnitudes per element, amplified by cancellation between them);
        # gloo adds the two ranks' float32 buckets on the host, NCCL on the GPUs: the same two-term sums
        for name, err in relative_differences(graphed, expected).items():
            assert err < max(1e-4, 4 * noise), (f'step {step}, {name}: DDP ({result["backend"]}) '
                                                f'gradients differ by {err:.2e} (relative norm); eager twice by up '
                                                f'to {noise:.2e}')

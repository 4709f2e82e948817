"""Process-group setup and CPU-side collectives, for torchrun and SLURM (docs/distributed.md).

Launchers (none of them ours):

* torchrun (`dist_train.sh`, `dist_val.sh`, one or several nodes) sets RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR and MASTER_PORT;
* SLURM's srun (`tools/slurm_train.sh`, `tools/slurm_val.sh`) starts one task per GPU and sets
  SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID and the node list. `slurm_environment`
  turns them into the variables above (master = first host of the step's node list, through
  `scontrol show hostnames` or, without scontrol, `expand_nodelist`), and the process group is then
  initialised from the environment exactly as under torchrun.

NCCL on GPUs, gloo on the CPU. `gather_object_chunks` gathers picklable objects on one rank
through the process group (no shared filesystem), a bounded number of bytes per collective.
"""
import math
import os
import pickle
import re
import shutil
import subprocess

__all__ = ['LAUNCHERS', 'detect_launcher', 'expand_nodelist', 'slurm_master_addr', 'slurm_environment',
           'init_distributed', 'wrap_distributed', 'gather_object_chunks', 'agree_on_checkpoint',
           'DEFAULT_CHUNK_BYTES']

LAUNCHERS = ('auto', 'none', 'pytorch', 'slurm')
DEFAULT_CHUNK_BYTES = 64 * 2 ** 20
# Slurm's batch step (the job script itself) has this step id; only tasks of an srun step are ranks
_SLURM_BATCH_STEP_IDS = {'batch', 'extern', 'interactive', '4294967294', '4294967293', '4294967292'}


def detect_launcher(environ=None):
    """Which launcher started this process: 'pytorch' (torchrun's RANK and WORLD_SIZE are set), 'slurm'
    (a task of an srun step with more than one task), else 'none' (one process).

    A job script run by sbatch also sees SLURM_PROCID=0 and SLURM_NTASKS, but it is not a rank: the
    step id tells an srun task (0, 1, ...) from the batch step.
    """
    env = os.environ if environ is None else environ
    if 'RANK' in env and 'WORLD_SIZE' in env:
        return 'pytorch'
    step = env.get('SLURM_STEP_ID', env.get('SLURM_STEPID'))
    if ('SLURM_PROCID' in env and int(env.get('SLURM_NTASKS', '1') or 1) > 1 and step is not None
            and step not in _SLURM_BATCH_STEP_IDS):
        return 'slurm'
    return 'none'


def _split_top_level(text, sep=','):
    """Split at `sep` outside brackets: 'a[1-2,4],b' -> ['a[1-2,4]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == '[':
            depth += 1
        elif ch == ']':
            depth -= 1
            if depth < 0:
                raise ValueError(f'unbalanced "]" in node list {text!r}')
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f'unbalanced "[" in node list {text!r}')
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def expand_nodelist(nodelist):
    """SLURM's compact host list -> host names, in order (what `scontrol show hostnames` prints).

    'gpu[01-03,07],login1' -> ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'login1']; zero padding is kept
    (as wide as the range's first bound), several bracket groups in one name multiply
    ('r[1-2]n[1-2]' -> r1n1, r1n2, r2n1, r2n2).
    """
    hosts = []
    for item in _split_top_level(nodelist):
        match = re.search(r'\[([^\[\]]*)\]', item)
        if match is None:
            hosts.append(item)
            continue
        head, tail = item[:match.start()], item[match.end():]
        for part in _split_top_level(match.group(1)):
            if '-' in part:
                lo, hi = part.split('-', 1)
                if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                    raise ValueError(f'bad range {part!r} in node list {nodelist!r}')
                values = [str(v).zfill(len(lo)) for v in range(int(lo), int(hi) + 1)]
            elif part.isdigit():
                values = [part]
            else:
                raise ValueError(f'bad entry {part!r} in node list {nodelist!r}')
            for value in values:
                hosts.extend(expand_nodelist(head + value + tail))
    return hosts


def slurm_master_addr(nodelist, use_scontrol=True):
    """The first host of `nodelist`: `scontrol show hostnames` when it is on the PATH, else expand_nodelist."""
    if use_scontrol and shutil.which('scontrol'):
        try:
            out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass  # fall back to parsing the list here
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise ValueError(f'empty SLURM node list {nodelist!r}')
    return hosts[0]


def slurm_environment(environ=None, use_scontrol=True):
    """torch.distributed's variables for an srun task, from SLURM's.

    Returns:
        dict(RANK=SLURM_PROCID, WORLD_SIZE=SLURM_NTASKS, LOCAL_RANK=SLURM_LOCALID, NODE_RANK=SLURM_NODEID,
        MASTER_ADDR=first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST,
        MASTER_PORT) as strings. MASTER_ADDR and MASTER_PORT already in the environment win; PORT
        is read as MASTER_PORT; otherwise the port is 20000 + SLURM_JOB_ID % 20000, so two jobs that
        share a node do not collide, and every task of a job agrees on it.
    """
    env = os.environ if environ is None else environ
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS') if k not in env]
    if missing:
        raise RuntimeError(f'--launcher slurm: {", ".join(missing)} not set; start the job with srun '
                           f'(tools/slurm_train.sh)')
    out = dict(RANK=env['SLURM_PROCID'], WORLD_SIZE=env['SLURM_NTASKS'], LOCAL_RANK=env.get('SLURM_LOCALID', '0'),
               NODE_RANK=env.get('SLURM_NODEID', '0'))
    if env.get('MASTER_ADDR'):
        out['MASTER_ADDR'] = env['MASTER_ADDR']
    else:
        nodelist = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST') or env.get('SLURM_NODELIST')
        if not nodelist:
            raise RuntimeError('--launcher slurm: no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST '
                               'to take the master address from; set MASTER_ADDR')
        out['MASTER_ADDR'] = slurm_master_addr(nodelist, use_scontrol)
    port = env.get('MASTER_PORT') or env.get('PORT')
    if not port:
        job = env.get('SLURM_JOB_ID', env.get('SLURM_JOBID', '0'))
        port = str(20000 + int(job) % 20000) if job.isdigit() else '29500'
    out['MASTER_PORT'] = port
    return out


def _cuda_index(local_rank):
    import torch
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    if count == 1:  # srun --gpus-per-task / a cgroup shows each task only its own GPU
        return 0
    raise RuntimeError(f'local rank {local_rank} but only {count} GPU(s) visible: start at most one process '
                       f'per GPU on each node')


def init_distributed(device='auto', launcher='auto'):
    """Initialise torch.distributed when several processes were started (torchrun or srun).

    Args:
        device (str): 'auto' (CUDA when available), 'cuda' or 'cpu'. NCCL on GPUs, gloo on the CPU
            (so the multi-process path also runs in CI).
        launcher (str): 'auto' (detect_launcher), 'none', 'pytorch' (torchrun's variables) or
            'slurm' (SLURM's variables, exported as torchrun's before the process group starts).
    Returns:
        (rank, world_size, torch.device)
    """
    import torch
    import torch.distributed as dist
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was asked for but no GPU is visible (CUDA_VISIBLE_DEVICES?)')
    if launcher == 'auto':
        launcher = detect_launcher()
    if launcher == 'slurm':
        os.environ.update(slurm_environment())
    if launcher == 'none':
        world_size, rank, local_rank = 1, 0, 0
    else:
        world_size = int(os.environ.get('WORLD_SIZE', 1))
        rank = int(os.environ.get('RANK', 0))
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if device == 'cuda':
        index = _cuda_index(local_rank)
        torch.cuda.set_device(index)
        torch_device = torch.device('cuda', index)
    else:
        torch_device = torch.device('cpu')
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device == 'cuda' else 'gloo', init_method='env://',
                                rank=rank, world_size=world_size)
    return rank, world_size, torch_device


def wrap_distributed(model, device, find_unused_parameters=False):
    """DDP over this process's device (see engine.parallel.OPSDistributedDataParallel)."""
    from engine.parallel import OPSDistributedDataParallel
    device_ids = [device.index] if device.type == 'cuda' else None
    return OPSDistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False,
                                      find_unused_parameters=find_unused_parameters)


def gather_object_chunks(obj, dst=0, chunk_bytes=DEFAULT_CHUNK_BYTES, group=None):
    """Every rank's `obj` on rank `dst`, through the process group: no file is written anywhere.

    Each rank pickles its object; the byte strings travel in rounds of at most `chunk_bytes` per rank
    (torch.distributed.gather_object), so a large result set never needs one huge message; rank `dst`
    joins and unpickles them. Under NCCL the chunks pass through the current GPU, under gloo through
    the CPU. A collective: every rank of the group must call it.

    Returns:
        on rank `dst`, the list of the `world_size` objects in rank order; elsewhere None. Without an
        initialised process group (one process): [obj].
    """
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return [obj]
    if chunk_bytes < 1:
        raise ValueError(f'chunk_bytes must be >= 1, got {chunk_bytes}')
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sizes = [None] * world_size
    dist.all_gather_object(sizes, len(payload), group=group)
    rounds = max(math.ceil(size / chunk_bytes) for size in sizes)
    received = [bytearray() for _ in range(world_size)] if rank == dst else None
    for i in range(rounds):
        piece = payload[i * chunk_bytes:(i + 1) * chunk_bytes]
        out = [None] * world_size if rank == dst else None
        dist.gather_object(piece, out, dst=dst, group=group)
        if rank == dst:
            for r, chunk in enumerate(out):
                received[r] += chunk
    if rank != dst:
        return None
    for r, (buf, size) in enumerate(zip(received, sizes)):
        if len(buf) != size:
            raise RuntimeError(f'gather_object_chunks: got {len(buf)} of the {size} bytes of rank {r}')
    return [pickle.loads(bytes(buf)) for buf in received]


def agree_on_checkpoint(path):
    """Rank 0's choice of checkpoint to resume from, checked to be readable by every rank.

    Auto-resume looks into each rank's work dir; on nodes without a shared filesystem they could
    disagree (rank 0 resumes, the others start afresh). Every rank takes rank 0's choice, and a
    checkpoint that some rank cannot read is an error naming those ranks.

    Returns:
        the path (or None: start afresh), the same on every rank.
    Raises:
        FileNotFoundError: the checkpoint is missing on some rank.
    """
    import os.path as osp

    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return path
    holder = [path]
    dist.broadcast_object_list(holder, src=0)
    path = holder[0]
    if path is None:
        return None
    visible = [None] * dist.get_world_size()
    dist.all_gather_object(visible, osp.isfile(path))
    missing = [rank for rank, ok in enumerate(visible) if not ok]
    if missing:
        raise FileNotFoundError(f'resume: checkpoint {path} (chosen by rank 0) cannot be read on rank(s) {missing}; '
                                f'put the work dir on a filesystem every node sees, or copy the checkpoint to the '
                                f'same path on every node')
    return path

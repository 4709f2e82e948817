"""SLURM: node lists, SLURM's variables -> torch.distributed's, launcher detection, the srun scripts,
and two processes started the way srun starts them joining one gloo process group."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

from engine.dist import detect_launcher, expand_nodelist, slurm_environment, slurm_master_addr

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.mark.parametrize('nodelist, hosts', [
    ('node07', ['node07']),
    ('gpu[01-03,07]', ['gpu01', 'gpu02', 'gpu03', 'gpu07']),
    ('gpu[8-10],login1', ['gpu8', 'gpu9', 'gpu10', 'login1']),
    ('a-[098-101].cluster,b[1]', ['a-098.cluster', 'a-099.cluster', 'a-100.cluster', 'a-101.cluster', 'b1']),
    ('r[1-2]n[1-2]', ['r1n1', 'r1n2', 'r2n1', 'r2n2']),
    ('host1,host2', ['host1', 'host2']),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize('bad', ['gpu[01-03', 'gpu]1[', 'gpu[3-1]', 'gpu[a-b]'])
def test_expand_nodelist_refuses_malformed_lists(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


SRUN_TASK = dict(SLURM_PROCID='5', SLURM_NTASKS='16', SLURM_LOCALID='1', SLURM_NODEID='1', SLURM_STEP_ID='0',
                 SLURM_JOB_ID='123456', SLURM_STEP_NODELIST='gpu[12-13]', SLURM_JOB_NODELIST='gpu[10-13]')


def test_slurm_environment_maps_the_task_variables():
    env = slurm_environment(SRUN_TASK, use_scontrol=False)
    # the step's first node is the master; the port follows the job id (all tasks agree, jobs differ)
    assert env == dict(RANK='5', WORLD_SIZE='16', LOCAL_RANK='1', NODE_RANK='1', MASTER_ADDR='gpu12',
                       MASTER_PORT=str(20000 + 123456 % 20000))
    given = slurm_environment(dict(SRUN_TASK, MASTER_ADDR='10.0.0.1', MASTER_PORT='29999'), use_scontrol=False)
    assert (given['MASTER_ADDR'], given['MASTER_PORT']) == ('10.0.0.1', '29999')
    assert slurm_environment(dict(SRUN_TASK, PORT='30001'), use_scontrol=False)['MASTER_PORT'] == '30001'
    no_step = {k: v for k, v in SRUN_TASK.items() if k != 'SLURM_STEP_NODELIST'}
    assert slurm_environment(no_step, use_scontrol=False)['MASTER_ADDR'] == 'gpu10'
    with pytest.raises(RuntimeError, match='SLURM_PROCID'):
        slurm_environment({'SLURM_NTASKS': '2'})


def test_master_address_from_scontrol(tmp_path, monkeypatch):
    scontrol = tmp_path / 'scontrol'
    scontrol.write_text('#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && printf "first-host\\nsecond-host\\n"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    assert slurm_master_addr('whatever[1-2]') == 'first-host'
    assert slurm_master_addr('gpu[3-4]', use_scontrol=False) == 'gpu3'


def test_detect_launcher():
    assert detect_launcher({}) == 'none'
    assert detect_launcher(dict(RANK='0', WORLD_SIZE='2', **SRUN_TASK)) == 'pytorch'  # torchrun inside a job
    assert detect_launcher(SRUN_TASK) == 'slurm'
    assert detect_launcher(dict(SRUN_TASK, SLURM_NTASKS='1')) == 'none'  # srun -n 1
    # the job script itself (sbatch) sees SLURM_PROCID=0 and the job's task count, but is no rank
    batch = {k: v for k, v in SRUN_TASK.items() if k != 'SLURM_STEP_ID'}
    assert detect_launcher(batch) == 'none'
    assert detect_launcher(dict(SRUN_TASK, SLURM_STEP_ID='batch')) == 'none'


def test_slurm_scripts_start_one_task_per_gpu(tmp_path):
    """A stand-in srun records its command line."""
    srun = tmp_path / 'srun'
    srun.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    srun.chmod(0o755)
    env = dict(os.environ, PATH=f'{tmp_path}{os.pathsep}{os.environ["PATH"]}', SRUN_ARGS='--time=1:00:00',
               PYTHON='python3')
    for script, args, tail in (
            ('slurm_train.sh', ['part', 'job', 'cfg.py', '16', '--seed', '1'],
             ['train.py', '--config', 'cfg.py', '--launcher', 'slurm', '--seed', '1']),
            ('slurm_val.sh', ['part', 'job', 'cfg.py', 'w.pth', '16'],
             ['val.py', '--config', 'cfg.py', '--weights', 'w.pth', '--launcher', 'slurm'])):
        subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args], env=env, check=True, timeout=60)
        argv = (tmp_path / 'argv').read_text().split('\n')[:-1]
        for option in ('-p', 'part', '--job-name=job', '--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8',
                       '--cpus-per-task=5', '--kill-on-bad-exit=1', '--time=1:00:00'):
            assert option in argv, (script, argv)
        assert argv[-len(tail):] == tail and argv[-len(tail) - 2:-len(tail)] == ['python3', '-u'], (script, argv)
    subprocess.run(['bash', osp.join(ROOT, 'tools', 'slurm_train.sh'), 'part', 'job', 'cfg.py', '2'],
                   env=env, check=True, timeout=60)
    argv = (tmp_path / 'argv').read_text().split('\n')
    assert '--ntasks=2' in argv and '--gres=gpu:2' in argv and '--ntasks-per-node=2' in argv


TASK = '''
import torch, torch.distributed as dist
from engine.dist import init_distributed
rank, world_size, device = init_distributed('cpu', launcher='auto')
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print('RESULT', rank, world_size, dist.get_backend(), int(value.item()), flush=True)
dist.destroy_process_group()
'''


def test_two_srun_tasks_join_one_gloo_group(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items()
            if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'PORT')}
    base.update(SLURM_NTASKS='2', SLURM_STEP_ID='0', SLURM_JOB_ID='777', SLURM_STEP_NODELIST='localhost',
                MASTER_PORT=str(port), OMP_NUM_THREADS='1', PYTHONPATH=ROOT, PATH='/usr/bin:/bin')  # no scontrol
    procs = [subprocess.Popen([sys.executable, '-c', TASK], cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(base, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID='0'))
             for rank in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (proc, out) in enumerate(zip(procs, outs)):
        assert proc.returncode == 0, out[-2000:]
        assert f'RESULT {rank} 2 gloo 3' in out, out[-2000:]

"""loaders/data_check.py and tools/check_data.py: every image, sweep and label file the infos name is found
before a run starts; missing and empty ones are named (one or two lines), train.py stops before building
the model and leaves no work dir."""
import os.path as osp
import pickle

import pytest

from engine.build import build_dataset
from loaders.data_check import DataCheckError, check_dataset, dataset_files, info_files
from tiny_ops import TINY_MODEL_CONFIG, TINY_PIPELINES
from tools import check_data


def pipeline(sweeps_num=1, occ_root=None):
    return [dict(type='LoadMultiViewImageFromFiles'),
            dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=sweeps_num),
            dict(type='LoadOccFromFile', occ_root=occ_root)]


def read(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def write(data, path):
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return str(path)


@pytest.fixture
def broken_infos(synthetic_infos, tmp_path):
    """The train infos with a missing key-frame image, an empty sweep image and a missing label file."""
    data = read(synthetic_infos.train)
    infos = data['infos']
    infos[0]['cams']['CAM_FRONT']['data_path'] = str(tmp_path / 'gone.jpg')
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    with_sweeps = next(i for i in infos if i['cam_sweeps'])
    with_sweeps['cam_sweeps'][0]['CAM_BACK']['data_path'] = str(empty)
    infos[-1]['occ_path'] = str(tmp_path / 'no_labels.npz')
    return write(data, tmp_path / 'broken_infos.pkl'), [str(tmp_path / 'gone.jpg'), str(empty),
                                                          str(tmp_path / 'no_labels.npz')]


def test_a_complete_world_passes_and_only_what_the_pipeline_reads_is_checked(synthetic_infos):
    infos = read(synthetic_infos.train)['infos']
    dataset = build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.train, pipeline=pipeline()))
    images = 6 * len(infos)
    sweeps = len({e['data_path'] for i in infos for s in i['cam_sweeps'] for e in s.values()})
    assert check_dataset(dataset, 'train', progress=False) == images + sweeps + len(infos)
    no_history = build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.train,
                                    pipeline=pipeline(sweeps_num=0)))
    assert len(dataset_files(no_history)) == images + len(infos)  # 1 frame: the sweeps are not read
    assert len(dataset_files(dataset, images=False)) == len(infos)  # e.g. val.py --load-preds: labels only
    val = build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.val, test_mode=True,
                             occ_root=osp.join(synthetic_infos.root, 'gts'),
                             pipeline=[dict(type='LoadMultiViewImageFromFiles')]))
    labels = [p for p, what in dataset_files(val, eval_labels=True).items() if 'labels' in what]
    assert len(labels) == len(val) and all(osp.isfile(p) for p in labels)


def test_the_gpu_decode_pipeline_is_checked_like_the_cpu_one(synthetic_infos):
    """The steps are found by class (and the multi-frame loader by its loads_history_frames), so the GPU-decode
    variants' images, sweeps and labels are checked too."""
    cpu = build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.train, pipeline=pipeline()))
    gpu = build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.train, pipeline=[
        dict(type='LoadMultiViewJpegFromFiles'), dict(type='LoadMultiViewJpegFromMultiSweeps', sweeps_num=1),
        dict(type='LoadOcc3DFromFile')]))
    files = dataset_files(cpu)
    assert dataset_files(gpu) == files and sum('sweep' in what for what in files.values()) > 0


def test_missing_and_empty_files_are_named(broken_infos):
    path, bad = broken_infos
    dataset = build_dataset(dict(type='NuScenesOccDataset', ann_file=path, pipeline=pipeline()))
    with pytest.raises(DataCheckError) as err:
        check_dataset(dataset, 'train', progress=False)
    assert sorted(p for p, _, _ in err.value.problems) == sorted(bad)
    kinds = {p: problem for p, _, problem in err.value.problems}
    assert kinds[bad[0]] == 'missing' and kinds[bad[1]] == 'empty' and kinds[bad[2]] == 'missing'
    message = str(err.value)
    assert message.count('\n') <= 1 and path in message and '3 of' in message
    assert any(b in message for b in bad) and '--skip-data-check' in message and 'tools/check_data.py' in message
    assert set(info_files(read(path)['infos'])) >= set(bad)


def test_check_data_tool_lists_the_problems(broken_infos, synthetic_infos, tmp_path, capsys):
    path, bad = broken_infos
    with pytest.raises(SystemExit) as err:
        check_data.main(['--infos', path, '--quiet'])
    assert str(err.value).startswith('check_data.py: error: 3 file(s) missing or empty')
    out = capsys.readouterr().out
    assert all(b in out for b in bad) and 'missing ' in out and 'empty ' in out
    assert check_data.main(['--infos', synthetic_infos.train, '--quiet'])[0][2] == []
    config = tmp_path / 'cfg.py'
    config.write_text(f'data = dict(train=dict(type="NuScenesOccDataset", ann_file={synthetic_infos.train!r}, '
                      f'pipeline={pipeline()!r}), val=dict(type="NuScenesOccDataset", ann_file={path!r}, '
                      f'pipeline={pipeline()!r}))\n')
    with pytest.raises(SystemExit, match='3 file'):
        check_data.main(['--config', str(config), '--quiet'])
    out = capsys.readouterr().out
    assert 'data.train' in out and 'all ' in out and 'data.val' in out


def test_train_stops_before_the_model_and_leaves_no_work_dir(broken_infos, synthetic_infos, tmp_path):
    import train
    path, bad = broken_infos
    config = tmp_path / 'tiny_train.py'
    config.write_text((TINY_MODEL_CONFIG + TINY_PIPELINES).format(occ_root=osp.join(synthetic_infos.root, 'gts')) + f'''
data = dict(workers_per_gpu=0, train=dict(type='NuScenesOccDataset', ann_file={path!r}, pipeline=_train_pipeline))
batch_size = 1
total_epochs = 1
optimizer = dict(type='AdamW', lr=2e-4)
optimizer_config = dict(type='OptimizerHook')
lr_config = dict(policy='CosineAnnealing', min_lr_ratio=1e-3)
checkpoint_config = dict(interval=1)
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook')])
load_from = None
''')
    work = tmp_path / 'outputs' / 'tiny_train'
    with pytest.raises(SystemExit) as err:
        train.main(['--config', str(config), '--work-dir', str(work), '--device', 'cpu', '--no-validate',
                    '--no-progress'])
    message = str(err.value)
    assert message.startswith('train.py: error: data check: ') and message.count('\n') <= 1, message
    assert not (tmp_path / 'outputs').exists(), 'the failed run left its work dir (or outputs/) behind'

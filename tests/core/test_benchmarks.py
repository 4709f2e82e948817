"""core/benchmarks/: the Benchmark description, its registry, its one label-path rule (the same path in all four
places that locate label files), and its label reader's checks."""
import os.path as osp

import numpy as np
import pytest

from core import benchmarks, occ3d
from core.benchmarks import (
    DEFAULT_BENCHMARK,
    OCC3D_NUSCENES,
    BenchmarkError,
    LabelFileError,
    benchmark_names,
    get_benchmark,
    register_benchmark,
)
from toy_benchmark import TOY, register_toy, toy


# ------------------------------------------------------------------ the registry
def test_the_registry_finds_registered_names_and_lists_them_for_an_unknown_one(monkeypatch):
    assert DEFAULT_BENCHMARK == 'occ3d-nuscenes'
    assert get_benchmark('occ3d-nuscenes') is OCC3D_NUSCENES
    assert get_benchmark(OCC3D_NUSCENES) is OCC3D_NUSCENES          # a description passes through
    with pytest.raises(BenchmarkError) as err:
        get_benchmark('occ3d-nuscene')
    shipped = ['nuscenes-occupancy', 'occ3d-nuscenes', 'occ3d-waymo']          # the modules of core/benchmarks/
    assert benchmark_names() == shipped
    assert str(err.value) == f"unknown benchmark 'occ3d-nuscene'; known: {', '.join(shipped)}"
    assert isinstance(err.value, ValueError) and err.value.user_error   # one line on the command line
    register_toy(monkeypatch)
    assert get_benchmark('toy-street') is TOY and benchmark_names() == sorted(shipped + ['toy-street'])
    with pytest.raises(ValueError) as err:
        get_benchmark(None)
    assert '\n' not in str(err.value) and str(err.value).endswith(f"known: {', '.join(benchmark_names())}")


def test_register_benchmark_refuses_a_taken_name_and_other_objects(monkeypatch):
    monkeypatch.setattr(benchmarks, '_REGISTRY', dict(benchmarks._REGISTRY))   # restored after the test
    assert register_benchmark(TOY) is TOY and get_benchmark('toy-street') is TOY
    with pytest.raises(ValueError, match="'toy-street' is already registered"):
        register_benchmark(toy(title='another'))
    with pytest.raises(ValueError, match="'occ3d-nuscenes' is already registered"):
        register_benchmark(toy(name='occ3d-nuscenes'))
    with pytest.raises(TypeError, match='takes a Benchmark, got dict'):
        register_benchmark(dict(name='x'))


# ------------------------------------------------------------------ the description
def test_occ3d_nuscenes_has_the_published_protocol():
    """Independent values: the Occ3D-nuScenes protocol as the OPUS configs and the Occ3D paper state it."""
    b = OCC3D_NUSCENES
    assert b.name == 'occ3d-nuscenes' and b.title == 'Occ3D-nuScenes'
    assert b.class_names == ('others', 'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle',
                             'pedestrian', 'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat',
                             'sidewalk', 'terrain', 'manmade', 'vegetation')
    assert b.free_label == 17 and b.num_classes == 17 and b.num_labels == 18 and b.label_names[-1] == 'free'
    assert b.grid_shape == (200, 200, 16)
    assert b.point_cloud_range == (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4) and b.voxel_size == (0.4, 0.4, 0.4)
    assert b.camera_names == ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
                              'CAM_BACK_RIGHT') and b.num_views == 6
    assert b.label_arrays == (('semantics', 'uint8'), ('mask_lidar', 'bool'), ('mask_camera', 'bool'))
    assert b.label_dtypes == {'semantics': np.uint8, 'mask_lidar': np.bool_, 'mask_camera': np.bool_}
    assert b.label_file == '{scene_name}/{token}/labels.npz' and b.label_path_key == 'occ_path'
    assert b.label_root_dir == 'gts' and b.label_layout == 'gts/<scene_name>/<token>/labels.npz'
    assert b.camera_mask is True and b.ray_iou is True


def test_the_historical_names_are_the_descriptions_fields():
    b = OCC3D_NUSCENES
    assert occ3d.BENCHMARK is b
    assert (occ3d.CLASS_NAMES, occ3d.NUM_CLASSES, occ3d.FREE_LABEL, occ3d.LABEL_NAMES, occ3d.NUM_LABELS) == \
        (b.class_names, b.num_classes, b.free_label, b.label_names, b.num_labels)
    assert (occ3d.POINT_CLOUD_RANGE, occ3d.VOXEL_SIZE, occ3d.GRID_SHAPE) == \
        (b.point_cloud_range, b.voxel_size, b.grid_shape)
    assert (occ3d.CAMERA_NAMES, occ3d.NUM_VIEWS, occ3d.LABEL_ARRAYS) == \
        (b.camera_names, b.num_views, b.label_array_names)
    assert occ3d.LabelFileError is LabelFileError


def test_the_models_defaults_are_the_descriptions():
    """The heads and the CPD module default to the description's numbers (configs pass their own)."""
    import inspect

    from models.densifier import Densifier
    from models.ops_head import OPSHead
    from models.opusv2_head import OPUSV2Head
    b = OCC3D_NUSCENES
    for cls in (OPSHead, OPUSV2Head):
        params = inspect.signature(cls).parameters
        assert params['num_classes'].default == 17 == b.num_classes and params['empty_label'].default == 17
        assert tuple(params['pc_range'].default) == b.point_cloud_range
        assert tuple(params['voxel_size'].default) == b.voxel_size
    d = Densifier()
    assert d.num_classes == 17 and d.voxel_num.tolist() == [200, 200, 16]
    # float32 buffer: the description's float64 values rounded once (exact for -40, 40, -1; 5.4 to float32)
    assert d.pc_range.tolist() == np.float32(b.point_cloud_range).tolist()


@pytest.mark.parametrize('change, message', [
    (dict(free_label=0), 'free_label must be 3'),
    (dict(grid_shape=(4, 4, 3)), r'gives \(4\.0, 4\.0, 2\.0\) voxels, not grid_shape \(4, 4, 3\)'),
    (dict(voxel_size=(0.4, 0.5, 0.5)), r'gives \(5\.0, 4\.0, 2\.0\) voxels'),
    (dict(point_cloud_range=(-1.0, -1.0, 0.0, 1.0, 1.0)), 'point_cloud_range 6'),
    (dict(class_names=('car', 'car', 'tree')), 'class_names must be non-empty and unique'),
    (dict(label_arrays=(('labels', 'uint8'),)), r'must hold "semantics"$'),
    (dict(camera_mask=True), r'must hold "semantics" and "mask_camera" \(camera_mask=True\)'),
    (dict(camera_names=()), 'camera_names is empty'),
])
def test_an_inconsistent_description_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        toy(**change)


def test_a_description_written_with_lists_is_normalised():
    b = toy(class_names=['car', 'road', 'tree'], grid_shape=[4, 4, 2], voxel_size=[0.5] * 3,
            point_cloud_range=[-1, -1, 0, 1, 1, 1], label_arrays=[('semantics', np.uint8)])
    assert b == TOY and hash(b) == hash(TOY)
    assert b.point_cloud_range == (-1.0, -1.0, 0.0, 1.0, 1.0, 1.0) and b.label_arrays == (('semantics', 'uint8'),)


# ------------------------------------------------------------------ the one label-path rule
def test_label_path_the_root_wins_then_the_stored_path():
    info = dict(scene_name='scene-0001', token='tok', occ_path='/stored/labels.npz')
    b = OCC3D_NUSCENES
    assert b.label_path(info, '/cfg/gts') == osp.join('/cfg/gts', 'scene-0001', 'tok', 'labels.npz')
    assert b.label_path(info, None) == '/stored/labels.npz'
    with pytest.raises(ValueError) as err:
        b.label_path(dict(scene_name='s', token='t'), None)
    assert str(err.value) == ("no label root given and the sample info has no 'occ_path': set occ_root to the gts/ "
                              "folder of the Occ3D-nuScenes download (gts/<scene_name>/<token>/labels.npz)")
    with pytest.raises(ValueError, match=r"lacks \['scene_name'\], which the Occ3D-nuScenes label path"):
        b.label_path(dict(token='t'), '/cfg/gts')
    # another layout: the description's template and stored-path key
    assert TOY.label_path(dict(scene_name='a', token='b', label_path='/x.npz'), '/toy') == '/toy/a/b.npz'
    assert TOY.label_path(dict(scene_name='a', token='b', label_path='/x.npz'), None) == '/x.npz'


def test_the_four_users_locate_the_same_label_file(synthetic_infos, tmp_path):
    """LoadOccFromFile, the evaluator, the data check and gen_sweep_info.py: the same path from the same info and
    root, written out by hand here (root/<scene_name>/<token>/labels.npz)."""
    import gen_sweep_info
    from engine.build import build_dataset
    from evaluation.evaluator import occ_gt_path
    from loaders.data_check import info_files
    from loaders.pipelines.loading import LoadOccFromFile
    root = str(tmp_path / 'labels_elsewhere')
    # gen_sweep_info.py with this label root writes occ_path by the rule
    written = gen_sweep_info.main(['--data-root', synthetic_infos.root, '--version', 'v1.0-mini', '--quiet',
                                   '--occ-root', root, '--no-check-files', '--out-dir', str(tmp_path / 'infos')])
    generated = _infos_by_token(written['train_mini'][0])
    # the fixture's infos point to the world's own gts/; the root given below must win over that
    dataset = build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.train, pipeline=None))
    step = LoadOccFromFile(occ_root=root)
    step_no_root = LoadOccFromFile()
    checked = info_files(dataset.data_infos, images=False, sweeps=False, occ_root=root)
    checked_no_root = info_files(dataset.data_infos, images=False, sweeps=False)
    assert len(dataset) == len(generated) == len(checked) == len(checked_no_root) > 0
    for index, info in enumerate(dataset.data_infos):
        expected = osp.join(root, info['scene_name'], info['token'], 'labels.npz')
        stored = osp.join(synthetic_infos.root, 'gts', info['scene_name'], info['token'], 'labels.npz')
        assert info['occ_path'] == stored and osp.isfile(stored)
        assert generated[info['token']] == expected                          # gen_sweep_info.py
        assert step.label_path(dataset.get_data_info(index)) == expected     # the training pipeline's step
        assert occ_gt_path(info, root) == expected                           # the evaluator
        assert expected in checked                                           # the data check
        # no root: every user takes the stored path
        assert step_no_root.label_path(dataset.get_data_info(index)) == stored
        assert occ_gt_path(info, None) == stored and stored in checked_no_root


def _infos_by_token(path):
    import pickle
    with open(path, 'rb') as f:
        return {i['token']: i['occ_path'] for i in pickle.load(f)['infos']}


# ------------------------------------------------------------------ the label reader
def test_a_label_file_of_another_grid_names_itself_its_shape_and_the_benchmarks(tmp_path):
    small = tmp_path / 'small_grid.npz'
    np.savez_compressed(small, semantics=np.zeros((100, 100, 16), np.uint8),
                        mask_lidar=np.zeros((100, 100, 16), np.uint8), mask_camera=np.zeros((100, 100, 16), np.uint8))
    with pytest.raises(LabelFileError) as err:
        OCC3D_NUSCENES.read_labels(str(small))
    assert str(err.value) == (f'{small}: semantics has shape (100, 100, 16), expected (200, 200, 16) (x, y, z), the '
                              f'grid of benchmark occ3d-nuscenes; replace it with the file of the Occ3D-nuScenes '
                              f'download (gts/<scene_name>/<token>/labels.npz)')
    # a toy-grid file: right for the toy description, wrong for Occ3D-nuScenes
    toy_file = tmp_path / 'toy.npz'
    sem = np.arange(32, dtype=np.uint8).reshape(4, 4, 2) % 4
    np.savez(toy_file, semantics=sem)
    assert np.array_equal(TOY.read_labels(str(toy_file))['semantics'], sem)
    with pytest.raises(LabelFileError, match=r'toy\.npz: semantics has shape \(4, 4, 2\), expected \(200, 200, 16\)'):
        OCC3D_NUSCENES.read_labels(str(toy_file), ('semantics',))
    occ_file = tmp_path / 'occ.npz'
    np.savez(occ_file, semantics=np.zeros((200, 200, 16), np.uint8))
    with pytest.raises(LabelFileError, match=r'occ\.npz: semantics has shape \(200, 200, 16\), expected \(4, 4, 2\) '
                                             r'\(x, y, z\), the grid of benchmark toy-street; replace it with the '
                                             r'file of the toy label archive'):
        TOY.read_labels(str(occ_file))


def test_the_loading_step_uses_the_benchmarks_layout_and_dtypes(tmp_path, monkeypatch):
    """LoadOccFromFile(benchmark=...) reads the toy layout and casts to the toy's dtypes."""
    from loaders.pipelines.loading import LoadOccFromFile
    register_toy(monkeypatch)
    sem = (np.arange(32).reshape(4, 4, 2) % 4).astype(np.int64)      # stored as int64, loaded as uint8
    (tmp_path / 'scene-a').mkdir()
    np.savez(tmp_path / 'scene-a' / 'tok.npz', semantics=sem)
    out = LoadOccFromFile(occ_root=str(tmp_path), benchmark='toy-street')(dict(scene_name='scene-a', sample_idx='tok'))
    assert out['voxel_semantics'].dtype == np.uint8 and np.array_equal(out['voxel_semantics'], sem)
    assert 'mask_camera' not in out and 'mask_lidar' not in out
    with pytest.raises(FileNotFoundError, match=r'Toy-Street labels not found: .*scene-a/gone\.npz\. occ_root must be '
                                                r'the toy_labels/ folder of the toy label archive'):
        LoadOccFromFile(occ_root=str(tmp_path), benchmark='toy-street')(dict(scene_name='scene-a', sample_idx='gone'))
    with pytest.raises(ValueError, match=f"unknown benchmark 'toy'; known: {', '.join(benchmark_names())}"):
        LoadOccFromFile(benchmark='toy')

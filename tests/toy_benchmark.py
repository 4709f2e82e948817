"""A small made-up benchmark description for the tests (and the worked example of docs/architecture.md,
"Adding a benchmark"): 3 classes + free on a 4 x 4 x 2 grid of 0.5 m voxels, two cameras, one label
file per sample at `<root>/<scene_name>/<token>.npz` holding only `semantics`, mIoU without a camera
mask and no RayIoU.

Tests register it with pytest's monkeypatch (`register_toy(monkeypatch)`), so the registry is restored
after each test.
"""
import dataclasses

from core import benchmarks
from core.benchmarks import Benchmark

TOY = Benchmark(
    name='toy-street',
    title='Toy-Street',
    class_names=('car', 'road', 'tree'),
    free_label=3,
    grid_shape=(4, 4, 2),
    point_cloud_range=(-1.0, -1.0, 0.0, 1.0, 1.0, 1.0),
    voxel_size=(0.5, 0.5, 0.5),
    camera_names=('CAM_LEFT', 'CAM_RIGHT'),
    label_file='{scene_name}/{token}.npz',
    label_path_key='label_path',
    label_arrays=(('semantics', 'uint8'),),
    label_root_dir='toy_labels',
    label_source='the toy label archive',
    camera_mask=False,
    ray_iou=False,
)


def toy(**changes):
    """TOY with some fields changed (validation runs again)."""
    return dataclasses.replace(TOY, **changes)


def register_toy(monkeypatch, bench=TOY):
    """Register `bench` for the duration of one test."""
    monkeypatch.setitem(benchmarks._REGISTRY, bench.name, bench)
    return bench

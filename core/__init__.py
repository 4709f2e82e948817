"""What every layer of OPS shares: the benchmark descriptions (`core.benchmarks`: `Benchmark`, the
registry, `OCC3D_NUSCENES`), the Occ3D-nuScenes constants under their historical names (`core.occ3d`,
aliases of `OCC3D_NUSCENES`), the geometry helpers (`core.geometry`) and the compiled-kernel fallback
(`core.compiled`: a kernel built at its first call, else the eager code).

`loaders/`, `models/`, `evaluation/`, `tools/` and `gen_sweep_info.py` import these modules
instead of restating a class list, the grid or a quaternion formula. They depend on numpy and
torch only (never on mmcv, mmdet or the data pipeline), so any layer can import them.
"""

"""What every layer of OPS shares: the Occ3D-nuScenes protocol constants (`core.occ3d`) and the
geometry helpers (`core.geometry`).

`loaders/`, `models/`, `evaluation/`, `tools/` and `gen_sweep_info.py` import these two modules
instead of restating a class list, the grid or a quaternion formula. They depend on numpy and
torch only (never on mmcv, mmdet or the data pipeline), so any layer can import them.
"""

"""Small on-disk Occ3D worlds for the evaluation tests (tests/evaluation, tests/engine): infos,
`labels.npz` files and predictions that differ from the ground truth."""
import math

import numpy as np

from core.occ3d import FREE_LABEL as F


def make_world(root, num_samples=3, seed=0):
    """Infos + labels.npz files: two scenes, ego driving along x; ground, boxes, a camera mask."""
    rng = np.random.default_rng(seed)
    infos, gts, preds = [], [], []
    for i in range(num_samples):
        scene = 'scene-0001' if i < 2 else 'scene-0002'
        token = f'tok{i:02d}'
        infos.append(dict(scene_name=scene, token=token, timestamp=i,
                          lidar2ego_translation=[0.94, 0.0, 1.84], lidar2ego_rotation=[1.0, 0.0, 0.0, 0.0],
                          ego2global_translation=[600.0 + 6.3 * i, 1600.0, 0.0],
                          ego2global_rotation=[math.cos(0.05 * i), 0.0, 0.0, math.sin(0.05 * i)]))
        sem = np.full((200, 200, 16), F, np.uint8)
        sem[:, :, 1] = np.where(rng.random((200, 200)) < 0.7, 11, 13)
        for _ in range(60):
            x, y, z = rng.integers(0, 195), rng.integers(0, 195), rng.integers(2, 12)
            sem[x:x + rng.integers(1, 6), y:y + rng.integers(1, 6), z:z + rng.integers(1, 4)] = rng.integers(0, 17)
        mask = rng.random(sem.shape) < 0.8
        path = root / scene / token
        path.mkdir(parents=True)
        np.savez_compressed(path / 'labels.npz', semantics=sem, mask_lidar=mask, mask_camera=mask)
        pred = sem.copy()
        change = rng.random(sem.shape) < 0.05
        pred[change] = rng.integers(0, 18, int(change.sum()))
        pred = np.roll(pred, shift=i, axis=0)  # shifted predictions give depth errors
        loc = np.argwhere(pred != F)
        preds.append(dict(sem_pred=pred[tuple(loc.T)].astype(np.int64), occ_loc=loc.astype(np.int64)))
        gts.append((sem, mask))
    return infos, gts, preds

"""The saved-prediction format: one `<sample token>.npz` per sample with `sem_pred` [M] and `occ_loc`
[M, 3] (x, y, z voxel indices), written by `val.py --save-dir` and read back by `val.py --load-preds`.

Results are kept in the smallest integer dtypes (`compact_result`): a whole val set of int64 results
takes ~15 GB, compacted under 2 GB.
"""
import os.path as osp

import numpy as np

__all__ = ['compact_result', 'save_prediction', 'read_prediction', 'SavedPredictions', 'PredictionFileError']


class PredictionFileError(ValueError):
    """A saved prediction that cannot be read (truncated, not an .npz, arrays missing or of the wrong shape)."""
    user_error = True  # engine/cli.py prints the message without a traceback


def compact_result(result):
    """The smallest integer dtypes that hold a result (uint8 labels, uint8/int16 indices).

    A full val set of int64 results takes ~15 GB; compacted, under 2 GB. Values are unchanged.
    """
    sem = np.asarray(result['sem_pred']).reshape(-1)
    loc = np.asarray(result['occ_loc']).reshape(-1, 3)
    loc_dtype = np.uint8 if (loc.size == 0 or (loc.min() >= 0 and loc.max() < 256)) else np.int16
    return dict(sem_pred=sem.astype(np.uint8), occ_loc=loc.astype(loc_dtype))


def save_prediction(path, result):
    """Write one result as `.npz` with arrays `sem_pred` [M] and `occ_loc` [M, 3] (x, y, z)."""
    result = compact_result(result)
    np.savez(path, sem_pred=result['sem_pred'], occ_loc=result['occ_loc'])


class SavedPredictions:
    """Read-only sequence of results saved by `val.py --save-dir`, one `<token>.npz` per sample.

    Files are read on access, so evaluating saved predictions never holds them all in memory.

    Args:
        pred_dir (str): folder of `<token>.npz` files.
        tokens (list[str]): sample tokens in dataset order.
        grid_shape (tuple[int] | None): the benchmark's grid; given, a prediction with a voxel index outside it
            (a prediction of another benchmark's grid) is an error naming the file.
    Returns (per item):
        dict(sem_pred=int64 [M], occ_loc=int64 [M, 3]).
    """

    def __init__(self, pred_dir, tokens, grid_shape=None):
        self.grid_shape = None if grid_shape is None else tuple(int(n) for n in grid_shape)
        if not osp.isdir(pred_dir):
            raise FileNotFoundError(f'prediction folder not found: {pred_dir} (write it with val.py --save-dir)')
        self.paths = [osp.join(pred_dir, f'{token}.npz') for token in tokens]
        missing = [p for p in self.paths if not osp.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f'{len(missing)} of {len(self.paths)} predictions are missing in {pred_dir}, e.g. {missing[0]}; '
                f'it must hold one <sample token>.npz per sample of the evaluated split (val.py --save-dir)')

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        result = read_prediction(self.paths[index])
        if self.grid_shape is not None and len(result['occ_loc']):
            top = tuple(int(v) for v in result['occ_loc'].max(0))
            if result['occ_loc'].min() < 0 or any(t >= n for t, n in zip(top, self.grid_shape)):
                grid = ' x '.join(map(str, self.grid_shape))
                raise PredictionFileError(
                    f'{self.paths[index]}: voxel indices reach {top}, outside the {grid} grid evaluated: predictions '
                    f'of another benchmark? Evaluate them with their own --benchmark')
        return result


def read_prediction(path):
    """One saved prediction -> dict(sem_pred=int64 [M], occ_loc=int64 [M, 3]); PredictionFileError names a bad file."""
    fix = 'write the predictions again with val.py --save-dir'
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ('sem_pred', 'occ_loc') if k not in data.files]
            if missing:
                raise PredictionFileError(f'{path}: lacks the array(s) {missing} (it holds {sorted(data.files)}); '
                                          f'{fix}')
            sem, loc = data['sem_pred'], data['occ_loc']
    except PredictionFileError:
        raise
    except Exception as exc:  # noqa: BLE001 (BadZipFile, EOFError, ValueError, OSError, ...)
        size = osp.getsize(path) if osp.isfile(path) else 0
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PredictionFileError(f'{path}: not a readable prediction .npz ({size:,} bytes; {detail}); {fix}') from exc
    if sem.ndim != 1 or loc.ndim != 2 or loc.shape[1] != 3 or loc.shape[0] != sem.shape[0]:
        raise PredictionFileError(f'{path}: sem_pred has shape {sem.shape} and occ_loc {loc.shape}; expected [M] and '
                                  f'[M, 3]; {fix}')
    return dict(sem_pred=sem.astype(np.int64), occ_loc=loc.astype(np.int64))

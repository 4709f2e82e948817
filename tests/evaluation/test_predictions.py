"""The saved-prediction format (evaluation/predictions.py): compact dtypes, `<token>.npz` files, lazy reading."""
import numpy as np
import pytest

from evaluation.predictions import SavedPredictions, compact_result, save_prediction


def test_saved_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    results = [dict(sem_pred=rng.integers(0, 17, 50), occ_loc=np.stack(
        [rng.integers(0, 200, 50), rng.integers(0, 200, 50), rng.integers(0, 16, 50)], 1)) for _ in range(2)]
    for token, result in zip(['a', 'b'], results):
        save_prediction(str(tmp_path / f'{token}.npz'), result)
        small = compact_result(result)
        assert small['sem_pred'].dtype == np.uint8 and small['occ_loc'].dtype == np.uint8
    loaded = SavedPredictions(str(tmp_path), ['a', 'b'])
    assert len(loaded) == 2
    for got, want in zip(loaded, results):
        assert got['sem_pred'].dtype == np.int64
        np.testing.assert_array_equal(got['sem_pred'], want['sem_pred'])
        np.testing.assert_array_equal(got['occ_loc'], want['occ_loc'])
    with pytest.raises(FileNotFoundError, match='1 of 3 predictions are missing'):
        SavedPredictions(str(tmp_path), ['a', 'b', 'c'])
    with pytest.raises(FileNotFoundError, match='prediction folder not found'):
        SavedPredictions(str(tmp_path / 'nope'), ['a'])
    # Indices that do not fit uint8 (a larger grid) keep a wider type, values unchanged.
    wide = compact_result(dict(sem_pred=np.array([1]), occ_loc=np.array([[300, 0, 0]])))
    assert wide['occ_loc'].dtype == np.int16 and wide['occ_loc'][0, 0] == 300

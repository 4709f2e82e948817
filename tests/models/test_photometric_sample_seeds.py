"""GpuPhotoMetricDistortion with per-sample seeds (training on any number of processes): a sample's
draws do not depend on its position in the batch; without seeds the global RNG is used as before."""
import numpy as np
import pytest
import torch

from models.photometric import GpuPhotoMetricDistortion


def reference_draw(aug, num_images):
    """The draw order of the class docstring, on numpy's global RNG (the single-process behaviour)."""
    p = dict(brightness=np.zeros(num_images), contrast_first=np.ones(num_images),
             contrast_last=np.ones(num_images), saturation=np.ones(num_images), hue=np.zeros(num_images),
             perm=np.tile(np.arange(3), (num_images, 1)))
    for i in range(num_images):
        if np.random.randint(2):
            p['brightness'][i] = np.random.uniform(-aug.brightness_delta, aug.brightness_delta)
        mode = np.random.randint(2)
        if mode == 0 and np.random.randint(2):
            p['contrast_first'][i] = np.random.uniform(aug.contrast_lower, aug.contrast_upper)
        if np.random.randint(2):
            p['saturation'][i] = np.random.uniform(aug.saturation_lower, aug.saturation_upper)
        if np.random.randint(2):
            p['hue'][i] = np.random.uniform(-aug.hue_delta, aug.hue_delta)
        if mode == 1 and np.random.randint(2):
            p['contrast_last'][i] = np.random.uniform(aug.contrast_lower, aug.contrast_upper)
        if np.random.randint(2):
            p['perm'][i] = np.random.permutation(3)
    return p


def assert_draws_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_without_seeds_the_global_rng_is_used_as_before():
    aug = GpuPhotoMetricDistortion()
    np.random.seed(5)
    want = reference_draw(aug, 12)
    after = np.random.get_state()[1].copy()
    np.random.seed(5)
    assert_draws_equal(aug.draw(12), want)
    assert np.array_equal(np.random.get_state()[1], after)
    aug.set_sample_seeds([1, 2])
    aug.set_sample_seeds(None)
    np.random.seed(5)
    assert_draws_equal(aug.draw(12), want)


def test_sample_draws_do_not_depend_on_the_batch():
    aug = GpuPhotoMetricDistortion()
    views = 6
    aug.set_sample_seeds([11, 22, 33])
    together = aug.draw(3 * views)
    parts = []
    for seed in (11, 22, 33):  # each sample alone, as on three processes
        aug.set_sample_seeds([seed])
        parts.append(aug.draw(views))
    assert_draws_equal(together, {k: np.concatenate([p[k] for p in parts]) for k in together})
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    aug.set_sample_seeds([11])
    aug.draw(views)
    assert np.array_equal(np.random.get_state()[1], state)  # the global RNG is left alone
    imgs = torch.rand(2 * views, 3, 4, 5) * 255
    aug.set_sample_seeds([11, 22])
    out = aug(imgs)
    aug.set_sample_seeds([22])
    # the same draws and the same elementwise float32 operations on the same pixels (each a correctly rounded
    # add, multiply, divide, remainder, min or max, wherever it falls in a vector): bitwise equal
    assert torch.equal(aug(imgs[views:]), out[views:])
    with pytest.raises(ValueError, match='cannot be split'):
        aug.set_sample_seeds([1, 2, 3, 4, 5])
        aug.draw(views)

"""RandomTransformImage: the image operations and the updated projection matrices agree.

The images encode their own pixel coordinates (red = u, green = v), so after augmentation the pixel
where the new lidar2img projects a 3D point tells where in the original image it came from."""
import numpy as np
import pytest

from loaders.pipelines.transforms import DEFAULT_IDA_AUG_CONF, RandomTransformImage

H, W = 90, 160


def coordinate_image():
    v, u = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = np.round(u * 255 / (W - 1))
    img[..., 1] = np.round(v * 255 / (H - 1))
    img[..., 2] = 200
    return img


def camera_lidar2img():
    """A camera looking along lidar x (right = -y, down = -z), intrinsics for a W x H image."""
    K = np.array([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]])
    R = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=np.float64)  # lidar -> camera
    m = np.eye(4)
    m[:3, :3] = K @ R
    return m


def project(lidar2img, pts):
    p = np.c_[pts, np.ones(len(pts))] @ np.asarray(lidar2img, np.float64).T
    return p[:, :2] / p[:, 2:3]


def check_consistency(conf, training, seed, tol):
    np.random.seed(seed)
    m = camera_lidar2img()
    step = RandomTransformImage(dict(conf, H=H, W=W), training=training)
    out = step(dict(img=[coordinate_image(), coordinate_image()], lidar2img=[m, m.copy()]))
    fH, fW = conf['final_dim']
    aug, aug_m = out['img'][0], out['lidar2img'][0]
    assert aug.shape == (fH, fW, 3) and aug.dtype == np.uint8
    assert np.array_equal(out['img'][0], out['img'][1])  # one draw for all images
    np.testing.assert_array_equal(out['lidar2img'][0], out['lidar2img'][1])
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform(5, 30, 2000), rng.uniform(-20, 20, 2000), rng.uniform(-5, 5, 2000)]
    uv = project(m, pts)
    uv_aug = project(aug_m, pts)
    # keep points inside both images, away from the borders (resampling blurs the edges)
    ok = (uv[:, 0] > 3) & (uv[:, 0] < W - 4) & (uv[:, 1] > 3) & (uv[:, 1] < H - 4) & \
        (uv_aug[:, 0] > 3) & (uv_aug[:, 0] < fW - 4) & (uv_aug[:, 1] > 3) & (uv_aug[:, 1] < fH - 4)
    assert ok.sum() > 100
    px = np.round(uv_aug[ok]).astype(int)
    colour = aug[px[:, 1], px[:, 0]].astype(np.float64)
    u_src, v_src = colour[:, 0] * (W - 1) / 255, colour[:, 1] * (H - 1) / 255
    err = np.hypot(u_src - uv[ok, 0], v_src - uv[ok, 1])
    # Error budget per point, in source pixels: the colour code's quantisation (0.5 level = 0.31 px in u, 0.17 in
    # v), PIL's bicubic rounding to uint8 (about as much), the nearest-pixel lookup (<= 0.5 / r per axis), the
    # half-pixel convention of the resize (0.5 |1 / r - 1|) and the scale quirk (the matrix scales by r, PIL by
    # int(W r) / W: up to ~0.8 px at the far edge); a flipped draw adds the flip convention's 1 / r in u (the
    # matrix maps u -> fW - u, the image i -> fW - 1 - i). The flipped draws here have r >= 0.9, so tol = 1.2 for the
    # median sits above the 1.11 px flip offset with the centred terms around it, and 2 tol for the 95th
    # percentile adds the random terms' spread (~1 px); a wrong crop, scale or flip moves points by many pixels.
    assert np.median(err) < tol and np.percentile(err, 95) < 2 * tol, (np.median(err), np.percentile(err, 95))
    return out


@pytest.mark.parametrize('seed', range(4))
def test_train_augmentation_keeps_projections_consistent(seed):
    conf = dict(resize_lim=(0.8, 1.1), final_dim=(64, 128), bot_pct_lim=(0.0, 0.1), rot_lim=(0.0, 0.0), rand_flip=True)
    check_consistency(conf, True, seed, tol=1.2)


def test_rotation_keeps_projections_consistent():
    conf = dict(resize_lim=(0.9, 0.9), final_dim=(72, 144), bot_pct_lim=(0.0, 0.0), rot_lim=(12.0, 12.0),
                rand_flip=False)
    out = check_consistency(conf, True, 0, tol=1.2)
    assert out['ida_aug']['rotate'] == 12.0


def test_flip_happens_and_is_consistent():
    conf = dict(resize_lim=(0.9, 0.9), final_dim=(72, 144), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), rand_flip=True)
    flips = set()
    for seed in range(8):
        flips.add(check_consistency(conf, True, seed, tol=1.2)['ida_aug']['flip'])
    assert flips == {True, False}


def test_test_mode_is_the_spec_centre_crop():
    step = RandomTransformImage(DEFAULT_IDA_AUG_CONF, training=False)
    resize, dims, crop, flip, rotate = step.sample_augmentation()
    # 704 / 1600 rounds to the same double as the literal 0.44 (both correctly rounded): exact
    assert resize == 0.44 and dims == (704, 396) and crop == (0, 140, 704, 396)
    assert flip is False and rotate == 0.0
    conf = dict(resize_lim=(0.5, 0.5), final_dim=(64, 128), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), rand_flip=True)
    check_consistency(conf, False, 0, tol=1.0)


def test_ida_matrix_hand_computed():
    ida = RandomTransformImage.ida_matrix(0.5, (10, 20, 110, 70), True, 0.0)
    expected = np.eye(4)
    expected[:2, :2] = [[-0.5, 0], [0, 0.5]]
    expected[:2, 2] = [-(-10) + 100, -20]  # flip: x -> 100 - (0.5 u - 10)
    np.testing.assert_array_equal(ida, expected)  # halves and whole pixels, cos 0 = 1, sin 0 = 0: exact
    # the scale is the float r, not the rounded size ratio (quirk kept from the original)
    ida = RandomTransformImage.ida_matrix(0.437, (0, 0, 704, 256), False, 0.0)
    assert ida[0, 0] == 0.437  # 1 * r + 0 * 0: exact


def test_crop_past_the_right_edge_is_zero_filled():
    np.random.seed(0)
    conf = dict(resize_lim=(0.6, 0.6), final_dim=(40, 128), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0),
                rand_flip=False, H=H, W=W)
    out = RandomTransformImage(conf, training=True)(dict(img=[coordinate_image()], lidar2img=[np.eye(4)]))
    new_w = int(W * 0.6)  # 96 < 128: the crop starts at x0 = 0 and passes the edge
    img = out['img'][0]
    assert np.all(img[:, new_w:] == 0) and np.all(img[:, :new_w - 1, 2] > 0)
    assert out['img_shape'] == [(40, 128, 3)] == out['ori_shape'] == out['pad_shape']


def test_all_lidar2img_are_updated_even_without_their_images():
    """Online mode: 6 images but T*6 matrices; every matrix gets the same ida."""
    np.random.seed(3)
    conf = dict(DEFAULT_IDA_AUG_CONF, H=H, W=W, final_dim=(64, 128), resize_lim=(0.8, 1.0))
    ms = [camera_lidar2img() * (i + 1) for i in range(12)]
    out = RandomTransformImage(conf, training=True)(dict(img=[coordinate_image()] * 6, lidar2img=ms))
    a = out['ida_aug']
    ida = RandomTransformImage.ida_matrix(a['resize'], a['crop'], a['flip'], a['rotate'])
    assert len(out['lidar2img']) == 12 and len(out['img']) == 6
    for m_in, m_out in zip(ms, out['lidar2img']):
        assert m_out.dtype == np.float32
        # the step stores this same float64 product in float32: <= half an ulp (rtol float32 eps)
        np.testing.assert_allclose(m_out, ida @ m_in, rtol=float(np.finfo(np.float32).eps))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match='set H and W of ida_aug_conf'):
        RandomTransformImage(DEFAULT_IDA_AUG_CONF)(dict(img=[coordinate_image()], lidar2img=[np.eye(4)]))
    with pytest.raises(TypeError, match='uint8'):
        RandomTransformImage(dict(H=H, W=W))(dict(img=[coordinate_image().astype(np.float32)], lidar2img=[np.eye(4)]))
    with pytest.raises(KeyError, match='resize_limit'):
        RandomTransformImage(dict(resize_limit=(0.3, 0.4)))

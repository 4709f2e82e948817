"""PadViewsToSize: images of two sizes on one canvas, the projections shifted with them (hand-computed cases)."""
import numpy as np
import pytest

from loaders.pipelines.pad_views import PadViewsToSize
from loaders.pipelines.transforms import RandomTransformImage


def views(num_frames=2, loaded_frames=2):
    """Two cameras (0: 4x6, 1: 2x6 pixels), `num_frames` frames of projections, `loaded_frames` of images.

    Pixel values encode (frame, camera, row, column); every camera's lidar2img maps the point (x, y, z) to
    pixel (u, v) = (x / z, y / z) at depth z, plus a per-view offset in u so that views differ."""
    imgs, filenames, lidar2img = [], [], []
    for t in range(num_frames):
        for n, h in enumerate((4, 2)):
            m = np.eye(4)
            m[0, 2] = t + 0.5 * n          # u = x / z + t + 0.5 n
            lidar2img.append(m.astype(np.float32))
            filenames.append(f'frame{t}_cam{n}.png')
            if t < loaded_frames:
                v, u = np.mgrid[0:h, 0:6]
                imgs.append(np.stack([np.full_like(u, 100 * t + 10 * n + 1), v, u], -1).astype(np.uint8))
    return dict(img=imgs, img_filename=filenames[:2], filename=filenames, lidar2img=lidar2img)


def pixel(matrix, point):
    p = np.asarray(matrix, np.float64) @ np.append(point, 1.0)
    return p[:2] / p[2]


@pytest.mark.parametrize('align, side_row', [('top', 0), ('bottom', 2)])
def test_images_sit_on_the_canvas_and_projections_follow(align, side_row):
    out = PadViewsToSize((4, 8), align=align)(views())
    assert len(out['img']) == 4 and all(img.shape == (4, 8, 3) for img in out['img'])
    assert out['img_shape'] == [(4, 8, 3)] * 4 and out['pad_shape'] == [(4, 8, 3)] * 4
    assert out['pad_views'] == dict(size=(4, 8), rows=[0, side_row])
    point = np.array([6.0, 2.0, 2.0])                      # (u, v) = (3, 1) + the view's u offset
    for i, (img, matrix) in enumerate(zip(out['img'], out['lidar2img'])):
        t, n = divmod(i, 2)
        h = 4 if n == 0 else 2
        top = side_row if n == 1 else 0
        # the original pixels, moved down by `top` rows; zeros everywhere else
        expected = np.zeros((4, 8, 3), np.uint8)
        v, u = np.mgrid[0:h, 0:6]
        expected[top:top + h, :6] = np.stack([np.full_like(u, 100 * t + 10 * n + 1), v, u], -1)
        np.testing.assert_array_equal(img, expected)
        # hand-computed: the point's pixel moves by the same rows
        assert matrix.dtype == np.float32
        np.testing.assert_array_equal(pixel(matrix, point), [3 + t + 0.5 * n, 1 + top])


def test_online_mode_shifts_the_projections_of_frames_that_are_not_loaded():
    out = PadViewsToSize((4, 8), align='bottom')(views(num_frames=3, loaded_frames=1))
    assert len(out['img']) == 2 and len(out['lidar2img']) == 6
    rows = [pixel(m, np.array([0.0, 0.0, 1.0]))[1] for m in out['lidar2img']]
    assert rows == [0, 2, 0, 2, 0, 2]


def test_after_the_canvas_one_augmentation_serves_both_sizes():
    """Test-mode resize to half: a side-camera pixel (u, v) lands at ((u, v + 2) * 0.5 - crop) in the output."""
    results = PadViewsToSize((4, 8), align='bottom')(views(num_frames=1))
    conf = dict(resize_lim=(0.5, 0.5), final_dim=(2, 4), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), H=4, W=8,
                rand_flip=False)
    out = RandomTransformImage(conf, training=False)(results)
    assert [img.shape for img in out['img']] == [(2, 4, 3)] * 2
    # r = max(2 / 4, 4 / 8) = 0.5: the 4x8 canvas becomes 2x4, no crop
    np.testing.assert_allclose(pixel(out['lidar2img'][1], np.array([6.0, 2.0, 2.0])), [(3 + 0.5) * 0.5, (1 + 2) * 0.5],
                               rtol=1e-6)   # float32 matrices: a few ulps of the pixel coordinates


def test_bad_inputs_name_the_view_and_the_fix():
    with pytest.raises(ValueError, match=r'camera 0 \(frame0_cam0.png\) is 4x6 \(HxW\), larger than size 3x8'):
        PadViewsToSize((3, 8))(views())
    bad = views()
    bad['img'][3] = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match=r'view 3 \(frame1_cam1.png\) is 4x6, but the current image of its camera 1 '
                                         r'is 2x6'):
        PadViewsToSize((4, 8))(bad)
    jpeg = views()
    jpeg['img'] = [np.zeros(100, np.uint8)] * 4
    with pytest.raises(TypeError, match='GPU-decode pipeline carries JPEG bytes'):
        PadViewsToSize((4, 8))(jpeg)
    with pytest.raises(ValueError, match='align must be "top" or "bottom"'):
        PadViewsToSize((4, 8), align='centre')
    with pytest.raises(ValueError, match=r'size must be \(H, W\)'):
        PadViewsToSize((4,))

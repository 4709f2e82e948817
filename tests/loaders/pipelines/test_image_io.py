"""Image decoders (loaders/pipelines/image_io.py): the same BGR pixels from every backend, clear errors."""
import numpy as np
import pytest
from PIL import Image

from loaders.pipelines.image_io import imread_bgr, turbojpeg_decoder


def test_decoders_give_the_same_bgr_pixels(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:160]
    rgb = np.stack([xx * 1.5, yy * 2.5, 128 + 60 * np.sin(xx / 7.0)], -1)
    rgb = np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    rgb[10:30, 10:40] = (255, 0, 0)  # a red patch: BGR order check
    path = str(tmp_path / 'x.jpg')
    Image.fromarray(rgb).save(path, quality=95)
    ref = imread_bgr(path, 'pillow')
    assert ref.shape == (90, 160, 3) and ref.dtype == np.uint8
    assert ref[20, 25, 2] > 230 and ref[20, 25, 0] < 30  # red is the last channel in BGR
    # decodes what was encoded: quality 95 quantisation removes at most all of the sigma = 3 noise (mean |N(0, 3)| =
    # 2.4 levels) and 4:2:0 chroma blurs the red patch's edges (~200 px off by tens of levels: < 1 level on average);
    # a swapped channel or a broken decode is off by tens of levels
    assert np.abs(ref.astype(int)[..., ::-1] - rgb).mean() < 4
    backends = ['cv2', 'auto'] + (['turbojpeg'] if turbojpeg_decoder() is not None else [])
    for backend in backends:
        img = imread_bgr(path, backend)
        assert img.shape == ref.shape and img.dtype == np.uint8
        diff = np.abs(img.astype(int) - ref)
        # JPEG decoders differ by their IDCT rounding (the standard allows 1 level per Y/Cb/Cr sample: <= 3 levels
        # after the colour transform) and their chroma upsampling rounding at the red patch's edges; most pixels
        # are equal, so the mean stays well below one level
        assert diff.max() <= 8 and diff.mean() < 0.5, (backend, diff.max(), diff.mean())


def test_decoder_errors(tmp_path, in_dir):
    with in_dir(tmp_path):
        with pytest.raises(FileNotFoundError, match='resolved against the current directory'):
            imread_bgr('data/nuscenes/samples/CAM_FRONT/missing.jpg')
    with pytest.raises(ValueError, match='unknown image backend'):
        imread_bgr(__file__, 'magick')
    if turbojpeg_decoder() is None:
        Image.new('RGB', (8, 8)).save(tmp_path / 'y.jpg')
        with pytest.raises(RuntimeError, match='libjpeg-turbo >= 3'):
            imread_bgr(str(tmp_path / 'y.jpg'), 'turbojpeg')

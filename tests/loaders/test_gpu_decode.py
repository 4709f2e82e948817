"""The optional GPU image decode (loaders/pipelines/gpu_decode.py + models/gpu_image_decode.py).

CPU-runnable: the tensor resize/crop/flip/rotate against RandomTransformImage's PIL operations on the
same decoded image (torchvision.io.decode_jpeg also decodes on the CPU); JPEG header parsing; the
pipeline converter; the whole GPU-decode data flow (dataset -> mmcv collate -> unpack_batch ->
decode_and_transform on the CPU) against the CPU pipeline on the synthetic world. With CUDA: the same
on the device, and nvJPEG against the CPU decode on the real 1600x900 keyframe, within JPEG decoder
tolerance.
"""
import copy
import io
import os.path as osp

import numpy as np
import pytest
import torch
from mmdet.datasets import build_dataset
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

import loaders  # noqa: F401  (registers the dataset and the pipeline steps)
import real_data
from engine.parallel import unpack_batch
from loaders import build_dataloader
from loaders.pipelines import gpu_decode_pipeline
from loaders.pipelines.image_io import imread_bgr, jpeg_size, read_jpeg_bytes
from loaders.pipelines.transforms import RandomTransformImage
from models.gpu_image_decode import decode_and_transform, resize_crop_flip_rotate

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU (nvJPEG decode path)')

H, W = 90, 160  # the synthetic world of tests/conftest.py
IDA = dict(resize_lim=(0.6, 1.1), final_dim=(64, 128), bot_pct_lim=(0.0, 0.2), rot_lim=(0.0, 0.0), H=H, W=W,
           rand_flip=True)
# Resize: two passes, each rounded to uint8; a one-level difference after the first pass moves the second pass's
# value by its tap weight (the taps' |weights| sum to <= 1.25 for the a = -0.5 cubic), so the pre-rounding values
# differ by < 1.25 + the weights' own rounding and the final values by at most 2 levels.
MAX_RESIZE_DIFF = 2
# Two JPEG decoders: the IDCT may differ by 1 level per Y/Cb/Cr sample (the standard's accuracy), <= 3 levels
# after the colour transform, and their chroma upsampling rounds differently at colour edges; most pixels agree,
# so the mean stays below half a level. 8 levels = 3 bits for the edge pixels.
JPEG_MEAN_DIFF, JPEG_MAX_DIFF = 0.5, 8
META_KEYS = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp', 'ego2lidar')


def textured_bgr(h, w, seed=0):
    """A BGR uint8 image with smooth gradients, sharp edges and noise (what resampling filters see)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x // 7 + y // 5) % 2) * 255], -1)
    img = img.astype(np.int32) + rng.integers(-40, 41, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def to_chw(img_hwc):
    return torch.from_numpy(np.ascontiguousarray(img_hwc)).permute(2, 0, 1)[None].contiguous()


def pil_vs_tensor(img, resize_dims, crop, flip, rotate, device='cpu'):
    ref = RandomTransformImage().img_transform(img, resize_dims, crop, flip, rotate)
    out = resize_crop_flip_rotate(to_chw(img).to(device), resize_dims, crop, flip, rotate)[0]
    out = out.permute(1, 2, 0).cpu().numpy()
    assert out.shape == ref.shape
    return np.abs(out.astype(np.int16) - ref.astype(np.int16))


# ---------------------------------------------------------------------------------- tensor ops vs PIL
def test_resize_crop_flip_matches_pil_random_draws():
    """Random training draws (resize up and down, bottom crop, crop past the right edge = zero fill,
    flip): the tensor implementation gives PIL's pixels within 2 grey levels (rounding of the filter
    weights, in two passes), almost all exactly."""
    img = textured_bgr(H, W)
    t = RandomTransformImage(IDA, training=True)
    np.random.seed(0)
    zero_fill = 0
    for _ in range(12):
        _, dims, crop, flip, rotate = t.sample_augmentation()
        zero_fill += crop[2] > dims[0]
        d = pil_vs_tensor(img, dims, crop, flip, rotate)
        # PIL sums integer filter weights (16-bit in Pillow-SIMD, 22-bit in Pillow), the tensor version float32:
        # before rounding the two differ by up to ~1e-2 level, ~3e-3 on average, so a pixel rounds differently
        # at that rate per pass (~0.5% after both); a one-level difference after the horizontal pass enters the
        # vertical one with its tap weight (MAX_RESIZE_DIFF)
        assert d.max() <= MAX_RESIZE_DIFF and (d == 0).mean() > 0.99, (dims, crop, flip, d.max(), (d == 0).mean())
    assert zero_fill, 'no draw cropped past the right edge'
    # the test-time draw and an identity resize (crop only: exact)
    _, dims, crop, flip, rotate = RandomTransformImage(IDA, training=False).sample_augmentation()
    assert pil_vs_tensor(img, dims, crop, flip, rotate).max() <= MAX_RESIZE_DIFF
    assert pil_vs_tensor(img, (W, H), (-3, 10, 125, 74), True, 0.0).max() == 0


def test_rotation_matches_pil_exactly():
    """PIL's nearest-neighbour rotation (fixed-point inverse map, zero fill) is reproduced exactly; with
    a resize in front, within the resize's 2 grey levels."""
    img = textured_bgr(64, 128, seed=1)
    for angle in (5.4, -5.4, 0.7, 33.0, 90.0, 180.0, 200.0, -0.0001):
        d = pil_vs_tensor(img, (128, 64), (0, 0, 128, 64), False, angle)
        assert d.max() == 0, (angle, int((d > 0).sum()))
    img = textured_bgr(H, W, seed=2)
    d = pil_vs_tensor(img, (131, 74), (2, 10, 130, 74), True, -4.2)
    assert d.max() <= MAX_RESIZE_DIFF


def test_real_image_resize_matches_pil():
    """One real 1600x900 nuScenes image, decoded by torchvision on the CPU, at the training resize range
    ends (0.38 with zero fill at the right, 0.55) and the test resize: within 2 grey levels of PIL."""
    kf = real_data.load_keyframe()
    path = kf.image_paths['CAM_FRONT']
    rgb = decode_jpeg(torch.from_numpy(read_jpeg_bytes(path)), mode=ImageReadMode.RGB)
    bgr = rgb.flip(0).permute(1, 2, 0).numpy()
    # torchvision's libjpeg-turbo gives the loaders' pixels within JPEG decoder tolerance
    dec = np.abs(imread_bgr(path).astype(np.int16) - bgr.astype(np.int16))
    assert dec.mean() < JPEG_MEAN_DIFF and dec.max() <= JPEG_MAX_DIFF
    for dims, crop, flip in (((608, 342), (0, 86, 704, 342), True), ((880, 495), (97, 239, 801, 495), False),
                             ((704, 396), (0, 140, 704, 396), False)):
        d = pil_vs_tensor(bgr, dims, crop, flip, 0.0)
        # as above; the mean is the rate of rounding differences (< 1% per the argument above)
        assert d.max() <= MAX_RESIZE_DIFF and d.mean() < 0.01, (dims, d.max(), d.mean())


# ---------------------------------------------------------------------------------- JPEG bytes
def test_jpeg_size_and_bytes(tmp_path):
    img = textured_bgr(37, 53)
    for name, kwargs in (('base.jpg', {}), ('prog.jpg', dict(progressive=True)), ('q.jpg', dict(quality=30))):
        path = str(tmp_path / name)
        Image.fromarray(img).save(path, **kwargs)
        data = read_jpeg_bytes(path)
        assert data.dtype == np.uint8 and data.ndim == 1 and data.flags.writeable
        assert jpeg_size(data) == jpeg_size(data.tobytes()) == (37, 53)
    png = str(tmp_path / 'x.png')
    Image.fromarray(img).save(png)
    with pytest.raises(ValueError, match='not a JPEG'):
        read_jpeg_bytes(png)
    with pytest.raises(FileNotFoundError):
        read_jpeg_bytes(str(tmp_path / 'missing.jpg'))
    with pytest.raises(ValueError, match='start-of-frame'):
        jpeg_size(b'\xff\xd8\xff\xe0\x00\x04ab')


def test_gpu_decode_pipeline_converts_train_and_test_lists():
    from mmcv import Config
    cfg = Config.fromfile(osp.join(real_data.REPO_ROOT, 'configs', '_base_', 'ops_r50_704x256_8f.py'))
    train = [dict(s) for s in cfg.train_pipeline]
    before = copy.deepcopy(train)
    conv = gpu_decode_pipeline(train)
    assert train == before  # the input list is not modified
    types = [s['type'] for s in conv]
    assert types[:2] == ['LoadMultiViewJpegFromFiles', 'LoadMultiViewJpegFromMultiSweeps']
    assert 'DeferredRandomTransformImage' in types and 'JpegFormatBundle3D' in types
    assert not {'LoadMultiViewImageFromFiles', 'RandomTransformImage', 'DefaultFormatBundle3D'} & set(types)
    collect = [s for s in conv if s['type'] == 'Collect3D'][0]
    assert collect['keys'][0] == 'img_jpeg' and 'img' not in collect['keys']
    test = gpu_decode_pipeline([dict(s) for s in cfg.test_pipeline])
    inner = [s for s in test if 'transforms' in s][0]['transforms']
    assert [s['type'] for s in inner] == ['JpegFormatBundle3D', 'Collect3D'] and inner[1]['keys'] == ['img_jpeg']


# ---------------------------------------------------------------------------------- the data flow
def synthetic_pipeline(gpu):
    pipe = [dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
            dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7),
            dict(type='LoadOccFromFile', occ_root=None),
            dict(type='RandomTransformImage', ida_aug_conf=IDA, training=True),
            dict(type='DefaultFormatBundle3D'),
            dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=META_KEYS)]
    return gpu_decode_pipeline(pipe) if gpu else pipe


def synthetic_dataset(infos, gpu):
    return build_dataset(dict(type='NuScenesOccDataset', ann_file=infos.train, pipeline=synthetic_pipeline(gpu),
                              data_root=infos.root))


def batches(infos, gpu, seed):
    """Both batches (samples 1 and 2 of the scene: 48 images each, with history) of one epoch."""
    from torch.utils.data import Subset
    np.random.seed(seed)
    loader = build_dataloader(Subset(synthetic_dataset(infos, gpu), [1, 2]), samples_per_gpu=2, workers_per_gpu=0,
                              shuffle=False)
    return [unpack_batch(b, torch.device('cpu')) for b in loader]


def check_same_batch(ref, dev, img_dev):
    assert 'img' not in dev and set(dev) == set(ref) - {'img'} | {'img_jpeg'}
    img_ref = ref['img']
    assert img_dev.dtype == torch.uint8 and img_dev.shape == img_ref.shape == (2, 48, 3, 64, 128)
    for m_ref, m_dev in zip(ref['img_metas'], dev['img_metas']):
        assert set(m_ref) == set(m_dev) == set(META_KEYS)
        for key in META_KEYS:
            a, b = m_ref[key], m_dev[key]
            if isinstance(a, list):
                assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), key
            else:
                assert np.array_equal(a, b), key
    assert torch.equal(ref['voxel_semantics'], dev['voxel_semantics'])
    assert torch.equal(ref['mask_camera'], dev['mask_camera'])
    return (img_dev.cpu().to(torch.int16) - img_ref.to(torch.int16)).abs()


def test_gpu_decode_data_flow_matches_cpu_pipeline_on_cpu(synthetic_infos):
    """Same seed -> same history frames, same augmentation draw, bit-identical lidar2img and metas and
    labels; `img_jpeg` stays a host-side list of dicts after unpack_batch; decode_and_transform on the CPU
    gives the CPU pipeline's images within decoder + resize tolerance."""
    ref = batches(synthetic_infos, gpu=False, seed=3)
    dev = batches(synthetic_infos, gpu=True, seed=3)
    assert len(ref) == len(dev) == 1
    ref, dev = ref[0], dev[0]
    items = dev['img_jpeg']
    assert isinstance(items, list) and len(items) == 2 and items[0]['data'].device.type == 'cpu'
    assert len(items[0]['offsets']) == 49 and items[0]['crop'][2] - items[0]['crop'][0] == 128
    d = check_same_batch(ref, dev, decode_and_transform(items, 'cpu'))
    # two libjpeg-turbo decodes (JPEG_*_DIFF) followed by the resize (<= 2 levels at < 1% of the pixels)
    assert d.float().mean() < 0.1 and d.max() <= JPEG_MAX_DIFF, (d.float().mean(), d.max())


def test_deferred_transform_errors():
    from loaders.pipelines.gpu_decode import DeferredRandomTransformImage, JpegFormatBundle3D
    with pytest.raises(TypeError, match='JPEG bytes'):
        DeferredRandomTransformImage(IDA)(dict(img=[np.zeros((H, W, 3), np.uint8)], lidar2img=[np.eye(4)]))
    buf = io.BytesIO()
    Image.fromarray(textured_bgr(20, 30)).save(buf, format='JPEG')
    data = np.frombuffer(buf.getvalue(), np.uint8).copy()
    with pytest.raises(ValueError, match='ida_aug_conf says H=90, W=160'):
        DeferredRandomTransformImage(IDA)(dict(img=[data], lidar2img=[np.eye(4)]))
    with pytest.raises(KeyError, match='DeferredRandomTransformImage'):
        JpegFormatBundle3D()(dict(img=[data]))
    with pytest.raises(ValueError, match='to_float32'):
        loaders.pipelines.LoadMultiViewJpegFromFiles(to_float32=True)


# ---------------------------------------------------------------------------------- on the GPU
@needs_cuda
def test_cuda_resize_crop_flip_matches_pil():
    img = textured_bgr(900, 1600, seed=4)
    for dims, crop, flip, rot in (((608, 342), (0, 86, 704, 342), True, 0.0),
                                  ((880, 495), (97, 239, 801, 495), False, 3.0)):
        d = pil_vs_tensor(img, dims, crop, flip, rot, device='cuda')
        # the CPU argument (weights rounded differently before each pass's rounding); the CUDA kernel's float32
        # sums add ~1e-3 level of their own: the rate stays ~1%, the difference <= 2
        assert d.max() <= MAX_RESIZE_DIFF and d.mean() < 0.02, (dims, d.max(), d.mean())


@needs_cuda
def test_cuda_data_flow_matches_cpu_pipeline(synthetic_infos):
    ref = batches(synthetic_infos, gpu=False, seed=5)[0]
    dev = batches(synthetic_infos, gpu=True, seed=5)[0]
    img = decode_and_transform(dev['img_jpeg'], 'cuda')
    assert img.device.type == 'cuda'
    d = check_same_batch(ref, dev, img)
    # nvJPEG vs libjpeg-turbo (see test_nvjpeg_real_keyframe_matches_cpu_decode) after the resize: the mean of
    # their IDCT / chroma upsampling differences (< 2 levels) shrinks under the resize's averaging; the maximum
    # bounds chroma upsampling differences at sharp colour edges (a quarter of a full-scale edge)
    assert d.float().mean() < 1.5 and d.max() <= 64, (d.float().mean(), d.max())


@needs_cuda
def test_nvjpeg_real_keyframe_matches_cpu_decode():
    """The six real 1600x900 JPEGs: nvJPEG vs the loaders' CPU decoder (full size; mean < 2 grey levels is
    torchvision's own bound for its CUDA decoder), and the whole GPU path vs the CPU path (decode +
    RandomTransformImage) after the training resize. Channel swaps or misplaced crops give means of tens
    of grey levels; the loose maxima only bound the IDCT / chroma-upsampling differences at edges."""
    kf = real_data.load_keyframe()
    paths = [kf.image_paths[cam] for cam in real_data.CAMERAS]
    datas = [torch.from_numpy(read_jpeg_bytes(p)) for p in paths]
    gpu = decode_jpeg(datas, mode=ImageReadMode.RGB, device='cuda')
    t = RandomTransformImage(training=True)
    np.random.seed(0)
    _, dims, crop, flip, rotate = t.sample_augmentation()
    offsets = torch.tensor([0] + list(np.cumsum([len(x) for x in datas])))
    item = dict(data=torch.cat(datas), offsets=offsets, resize_dims=dims, crop=crop, flip=flip, rotate=rotate)
    out = decode_and_transform([item], 'cuda')[0].cpu()
    for v, path in enumerate(paths):
        cpu = imread_bgr(path)
        full = np.abs(gpu[v].flip(0).permute(1, 2, 0).cpu().numpy().astype(np.int16) - cpu.astype(np.int16))
        # mean: torchvision's own bound for its CUDA decoder; 99th percentile: the IDCT (+-1 per Y/Cb/Cr sample, <= 3
        # after the colour transform) and chroma upsampling differences away from the sharpest edges
        assert full.mean() < 2.0 and np.percentile(full, 99) <= 16, (path, full.mean(), np.percentile(full, 99),
                                                                      full.max())
        ref = t.img_transform(cpu, dims, crop, flip, rotate)
        d = np.abs(out[v].permute(1, 2, 0).numpy().astype(np.int16) - ref.astype(np.int16))
        # after the training resize: the decoders' differences averaged by the filter (mean < 1.5) plus the resize's
        # own <= 2 levels; the maximum bounds chroma upsampling differences at sharp colour edges
        assert d.mean() < 1.5 and d.max() <= 64, (path, d.mean(), np.percentile(d, 99.9), d.max())

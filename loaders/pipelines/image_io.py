"""Image decoding for the loaders: BGR uint8 [H, W, 3], whichever decoder is available.

pyturbojpeg (fast) is used for JPEGs when `TurboJPEG()` can load its system library (it needs
libjpeg-turbo >= 3 for PyTurboJPEG 2.x); otherwise OpenCV; Pillow as a last resort. The decoders
give the same pixels up to JPEG decoder tolerance (a few grey levels where IDCT implementations
differ).
"""
import os
import os.path as osp

import numpy as np

BACKENDS = ('auto', 'turbojpeg', 'cv2', 'pillow')
_turbo = None  # None: not tried yet; False: unavailable; else a TurboJPEG instance


def turbojpeg_decoder():
    """The TurboJPEG instance, or None when pyturbojpeg or its library cannot be loaded."""
    global _turbo
    if _turbo is None:
        try:
            from turbojpeg import TurboJPEG
            _turbo = TurboJPEG()
        except Exception:  # ImportError, OSError (no library), RuntimeError (library too old)
            _turbo = False
    return _turbo or None


def missing_file_message(path):
    hint = ''
    if not osp.isabs(path):
        hint = (f' Relative paths in the info pickles are resolved against the current directory ({os.getcwd()}): '
                f'start from the directory gen_sweep_info.py was run from, or regenerate the infos with an absolute '
                f'--data-root.')
    return f'file not found: {path}.{hint}'


def imread_bgr(path, backend='auto'):
    """Read a colour image as BGR uint8 [H, W, 3].

    Args:
        path (str): image file.
        backend (str): 'auto' (turbojpeg for JPEGs when usable, else cv2, else pillow), or force one.
    """
    if backend not in BACKENDS:
        raise ValueError(f'unknown image backend {backend!r}; choose one of {BACKENDS}')
    if not osp.isfile(path):
        raise FileNotFoundError(missing_file_message(path))
    is_jpeg = path.lower().endswith(('.jpg', '.jpeg'))
    if backend == 'turbojpeg' or (backend == 'auto' and is_jpeg):
        decoder = turbojpeg_decoder()
        if decoder is not None and is_jpeg:
            from turbojpeg import TJPF_BGR
            with open(path, 'rb') as f:
                return decoder.decode(f.read(), pixel_format=TJPF_BGR)
        if backend == 'turbojpeg':
            raise RuntimeError('the turbojpeg backend was requested but pyturbojpeg cannot decode here (it needs the '
                               'libjpeg-turbo >= 3 system library and a JPEG file); use backend="auto"')
    if backend in ('auto', 'cv2'):
        try:
            import cv2
        except ImportError:
            cv2 = None
            if backend == 'cv2':
                raise
        if cv2 is not None:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise OSError(f'cannot decode image {path} (corrupt or not an image)')
            return img
    from PIL import Image
    with Image.open(path) as im:
        rgb = np.asarray(im.convert('RGB'))
    return np.ascontiguousarray(rgb[..., ::-1])


def read_jpeg_bytes(path):
    """The bytes of a JPEG file as a writable uint8 [nbytes] array (the GPU decode path decodes them
    on the device; loaders/pipelines/gpu_decode.py)."""
    if not osp.isfile(path):
        raise FileNotFoundError(missing_file_message(path))
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ValueError(f'{path} is not a JPEG file; the GPU decode path (nvJPEG) reads JPEG images only: use the '
                         f'CPU loading steps for other formats')
    return data


# start-of-frame markers: baseline, extended, progressive, lossless (not DHT C4, JPG C8, DAC CC)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data):
    """(height, width) of a JPEG from its start-of-frame header (bytes or a uint8 array), without decoding."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ValueError('not a JPEG stream (no SOI marker)')
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f'corrupt JPEG stream: expected a marker at byte {i}')
        marker = int(data[i + 1])
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = (int(data[i + 2]) << 8) | int(data[i + 3])
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            return (int(data[i + 5]) << 8) | int(data[i + 6]), (int(data[i + 7]) << 8) | int(data[i + 8])
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise ValueError('corrupt JPEG stream: no start-of-frame header')

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

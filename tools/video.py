"""Frames (RGB uint8 [H, W, 3], all of one size) to a video file, without a display or system packages.

* `.mp4`: H.264 (yuv420p, plays in browsers and slides) through the ffmpeg binary that the
  imageio-ffmpeg wheel ships (requirements/runtime.txt); frames are streamed, so a long scene does
  not sit in memory. Frames are padded (BACKGROUND) to multiples of 16 pixels, the codec's block size.
* `.gif`: Pillow, no encoder needed; all frames are kept in memory and each is reduced to 256 colours.
"""
import os

import numpy as np

__all__ = ['write_video', 'VideoError', 'VIDEO_SUFFIXES']

VIDEO_SUFFIXES = ('.mp4', '.gif')
BLOCK = 16
BACKGROUND = (255, 255, 255)


class VideoError(ValueError):
    """A video that cannot be written (no frames, frames of different sizes, unknown suffix, no encoder)."""
    user_error = True  # engine/cli.py prints the message without a traceback


def _pad_to_blocks(frame):
    height, width = frame.shape[:2]
    pad_h, pad_w = -height % BLOCK, -width % BLOCK
    if not (pad_h or pad_w):
        return frame
    out = np.empty((height + pad_h, width + pad_w, 3), np.uint8)
    out[:] = BACKGROUND
    out[:height, :width] = frame
    return out


def write_video(frames, path, fps=2.0, quality=8):
    """Write `frames` to `path` (.mp4 or .gif); returns the number of frames written.

    Args:
        frames (iterable): RGB uint8 [H, W, 3] arrays, all of the same size.
        fps (float): frames per second (nuScenes key frames come at 2 Hz).
        quality (int): .mp4 only, imageio-ffmpeg's 0..10 scale (10: best).
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        raise VideoError(f'{path}: unknown video type {suffix or "(no suffix)"}; name it .mp4 (H.264) or .gif')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise VideoError(f'{path}: no frames to write')
    shape = np.shape(first)
    if len(shape) != 3 or shape[2] != 3:
        raise VideoError(f'{path}: frames must be RGB [H, W, 3] arrays, the first is {list(shape)}')

    def checked(frame, index):
        if np.shape(frame) != shape:
            raise VideoError(f'{path}: frame {index} is {list(np.shape(frame))}, the first {list(shape)}: all frames '
                             f'of a video have one size')
        return np.ascontiguousarray(frame, dtype=np.uint8)

    if suffix == '.gif':
        from PIL import Image
        images = [Image.fromarray(checked(first, 0))]
        images += [Image.fromarray(checked(f, i)) for i, f in enumerate(frames, 1)]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        return len(images)
    try:
        import imageio_ffmpeg
    except ImportError:
        raise VideoError(f'{path}: writing .mp4 needs the imageio-ffmpeg package (pip install -r '
                         f'requirements/runtime.txt); or name the file .gif') from None
    padded = _pad_to_blocks(checked(first, 0))
    writer = imageio_ffmpeg.write_frames(path, (padded.shape[1], padded.shape[0]), fps=fps, quality=quality,
                                         codec='libx264', macro_block_size=BLOCK,
                                         ffmpeg_log_level='error')
    writer.send(None)  # start ffmpeg
    count = 0
    try:
        writer.send(padded)
        count = 1
        for index, frame in enumerate(frames, 1):
            writer.send(_pad_to_blocks(checked(frame, index)))
            count += 1
    finally:
        writer.close()
    return count

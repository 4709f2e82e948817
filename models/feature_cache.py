"""Online-mode feature cache: per-frame FPN features in a fixed device ring buffer.

Symbols: S slots (15, the original's cache size), T frames per sample, L FPN levels; a frame's
level l is stored in the decoder's sampling layout, `[G, N, H_l, W_l, C/G]` (G channel groups,
N cameras, C channels, (H_l, W_l) the size of level l), so that the T frames read back are the
sampling op's input without another copy.

The original keeps a dict {first camera's filename: features} of at most 15 frames, first in,
first out, and computes a frame's features only when its key is not cached; the history frames of
a sample must be in the dict (they were the key frame of an earlier sample of the scene). This
class keeps exactly that bookkeeping on the host (an OrderedDict from key to slot) and the features
themselves in preallocated device tensors `[S, G, N, H_l, W_l, C/G]`, so that writing the new frame and
gathering the T frames of a sample are fixed-shape index operations that a CUDA graph can replay.
"""
from collections import OrderedDict

import torch

__all__ = ['FrameFeatureCache']


class FrameFeatureCache:
    """Host-side FIFO of frame keys -> ring slots, device-side ring of features.

    Args:
        capacity (int): frames kept (15 as the original: it pops while the size is >= 16).
    """

    def __init__(self, capacity=15):
        self.capacity = int(capacity)
        self.slots = OrderedDict()            # frame key -> slot index, oldest first
        self.rings = None                     # L tensors [S, *frame shape of level l]

    def clear(self):
        self.slots.clear()

    def allocate(self, level_shapes, dtype, device):
        """Ring tensors for L levels of the given per-frame shapes (kept while shapes match)."""
        shapes = [tuple(s) for s in level_shapes]
        if (self.rings is None or [tuple(r.shape[1:]) for r in self.rings] != shapes
                or self.rings[0].dtype != dtype or self.rings[0].device != torch.device(device)):
            self.rings = [torch.zeros((self.capacity,) + s, dtype=dtype, device=device) for s in shapes]
            self.slots.clear()

    def assign(self, keys):
        """Slots for one sample whose frames have the given keys (key frame first).

        The key frame gets its existing slot, or the slot of the oldest frame when the cache is full
        (the original inserts, then drops the oldest). Raises KeyError naming the history frames
        that are not cached.
        Returns:
            (int, list[int]): slot of the key frame, slot of each of the T frames.
        """
        current = keys[0]
        if current not in self.slots:
            if len(self.slots) >= self.capacity:
                _, slot = self.slots.popitem(last=False)
            else:
                used = set(self.slots.values())
                slot = next(s for s in range(self.capacity) if s not in used)
            self.slots[current] = slot
        missing = [k for k in keys[1:] if k not in self.slots]
        if missing:
            raise KeyError(missing)
        return self.slots[current], [self.slots[k] for k in keys]

    def write(self, slot, feats):
        """Store one frame's L levels (per-frame shapes of `allocate`) at `slot` (int64 device tensor `[1]`)."""
        for ring, feat in zip(self.rings, feats):
            ring.index_copy_(0, slot, feat[None].to(ring.dtype))

    def read(self, frame_slots):
        """L levels `[T, *frame shape]` of the frames at `frame_slots` (int64 device tensor `[T]`)."""
        return [ring[frame_slots] for ring in self.rings]

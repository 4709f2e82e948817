"""Image augmentation shared by all T*N images of a sample, with the projections updated
(docs/method.md, "Image augmentation")."""
import numpy as np
from mmdet.datasets.builder import PIPELINES
from PIL import Image

DEFAULT_IDA_AUG_CONF = dict(resize_lim=(0.38, 0.55), final_dim=(256, 704), bot_pct_lim=(0.0, 0.0),
                            rot_lim=(0.0, 0.0), H=900, W=1600, rand_flip=True)


def merge_aug_conf(step, name, conf, defaults):
    """`defaults` updated with `conf` (None = the defaults); a key not in `defaults` is a KeyError naming it."""
    merged = dict(defaults)
    if conf is not None:
        unknown = set(conf) - set(defaults)
        if unknown:
            raise KeyError(f'{step}: unknown {name} key(s) {sorted(unknown)}; known keys: {sorted(defaults)}')
        merged.update(conf)
    return merged


@PIPELINES.register_module()
class RandomTransformImage:
    """Resize, crop, flip and rotate every image with one random draw per sample.

    ida_aug_conf: resize_lim (r range), final_dim (fH, fW), bot_pct_lim, rot_lim (degrees), H, W
    (size of the original images), rand_flip. Training draws r ~ U(resize_lim), a bottom crop (with
    bot_pct), a random horizontal crop offset, a flip with p = 0.5 and a rotation; test uses
    r = max(fH/H, fW/W), a centred horizontal crop, no flip, no rotation.

    Image ops use PIL with its default bicubic resampling; the crop may pass the right image edge
    (zero fill). Each `lidar2img` (all T*N, also in online mode where fewer images exist) is
    left-multiplied by the 4x4 `ida` matrix whose [:2, :2] is the 2x2 affine part (float r, not the
    integer-rounded size ratio) and whose [:2, 2] is the translation, because lidar2img rows are
    (u*d, v*d, d, 1). Sets img_shape / ori_shape / pad_shape to lists of (fH, fW, 3).
    """

    def __init__(self, ida_aug_conf=None, training=True):
        self.ida_aug_conf = merge_aug_conf('RandomTransformImage', 'ida_aug_conf', ida_aug_conf,
                                           DEFAULT_IDA_AUG_CONF)
        self.training = training

    def sample_augmentation(self):
        """One draw: (resize r, resize_dims (W', H'), crop (x0, y0, x1, y1), flip, rotate [deg])."""
        c = self.ida_aug_conf
        H, W = c['H'], c['W']
        fH, fW = c['final_dim']
        if self.training:
            resize = np.random.uniform(*c['resize_lim'])
            resize_dims = (int(W * resize), int(H * resize))
            newW, newH = resize_dims
            crop_h = int((1 - np.random.uniform(*c['bot_pct_lim'])) * newH) - fH
            crop_w = int(np.random.uniform(0, max(0, newW - fW)))
            crop = (crop_w, crop_h, crop_w + fW, crop_h + fH)
            flip = bool(c['rand_flip'] and np.random.choice([0, 1]))
            rotate = np.random.uniform(*c['rot_lim'])
        else:
            resize = max(fH / H, fW / W)
            resize_dims = (int(W * resize), int(H * resize))
            newW, newH = resize_dims
            crop_h = int((1 - np.mean(c['bot_pct_lim'])) * newH) - fH
            crop_w = int(max(0, newW - fW) / 2)
            crop = (crop_w, crop_h, crop_w + fW, crop_h + fH)
            flip = False
            rotate = 0.0
        return resize, resize_dims, crop, flip, rotate

    @staticmethod
    def ida_matrix(resize, crop, flip, rotate):
        """4x4 image-augmentation matrix acting on lidar2img rows (u*d, v*d, d, 1)."""
        A = np.eye(2) * resize
        b = -np.array(crop[:2], dtype=np.float64)
        if flip:
            F = np.array([[-1.0, 0.0], [0.0, 1.0]])
            A, b = F @ A, F @ b + np.array([crop[2] - crop[0], 0.0])
        # PIL rotates counter-clockwise (as displayed, y down) about the image centre
        h = rotate / 180 * np.pi
        R = np.array([[np.cos(h), np.sin(h)], [-np.sin(h), np.cos(h)]])
        centre = np.array([crop[2] - crop[0], crop[3] - crop[1]]) / 2
        A, b = R @ A, R @ (b - centre) + centre
        ida = np.eye(4)
        ida[:2, :2] = A
        ida[:2, 2] = b
        return ida

    def img_transform(self, img, resize_dims, crop, flip, rotate):
        """PIL resize -> crop (zero fill outside) -> flip -> rotate of one [H, W, 3] image."""
        im = Image.fromarray(img)
        im = im.resize(resize_dims, Image.BICUBIC)
        im = im.crop(crop)
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im = im.rotate(rotate)
        return np.asarray(im)

    def __call__(self, results):
        if results['img'] and results['img'][0].dtype != np.uint8:
            raise TypeError('RandomTransformImage works on uint8 images (PIL); load them with to_float32=False')
        expected = (self.ida_aug_conf['H'], self.ida_aug_conf['W'])
        shape = results['img'][0].shape[:2] if results['img'] else expected
        if tuple(shape) != expected:
            raise ValueError(f'RandomTransformImage: images are {shape[0]}x{shape[1]} (HxW) but ida_aug_conf says '
                             f'H={expected[0]}, W={expected[1]}; set H and W of ida_aug_conf to the image size')
        resize, resize_dims, crop, flip, rotate = self.sample_augmentation()
        ida = self.ida_matrix(resize, crop, flip, rotate)
        results['img'] = [self.img_transform(img, resize_dims, crop, flip, rotate) for img in results['img']]
        results['lidar2img'] = [(ida @ m).astype(np.float32) for m in results['lidar2img']]
        fH, fW = self.ida_aug_conf['final_dim']
        n = len(results['img'])
        results['img_shape'] = [(fH, fW, 3)] * n
        results['ori_shape'] = [(fH, fW, 3)] * n
        results['pad_shape'] = [(fH, fW, 3)] * n
        results['ida_aug'] = dict(resize=resize, crop=crop, flip=flip, rotate=rotate)
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(ida_aug_conf={self.ida_aug_conf}, training={self.training})'

"""Headless 3D pictures of occupancy grids: every voxel a shaded cube, rasterised with a z-buffer in numpy.

Why our own rasteriser: it needs nothing beyond numpy, so it runs on any machine without a display,
an OpenGL library or a package that fails to install; what it draws is exact (a pixel shows the face
its centre's ray meets first: the tests check every pixel against an independent ray caster). Only the
faces between an occupied and a free voxel (or the grid's border) are drawn, and of those the ones
turned towards the camera: the real Occ3D-nuScenes grid has 89,810 such faces, drawn in about 0.2 s at
640 x 360 on a 2-core CPU. matplotlib's `voxels` sorts whole polygons back to front (painter's
algorithm: wrong where faces overlap in depth) and took 28 s for a quarter of that grid; pyrender needs
OSMesa or EGL and the vtk wheel (pyvista) the system's OpenGL libraries to render off screen
(docs/visualization.md).

Frames and conventions:
* A grid is indexed [x, y, z] (x forward, y left, z up) in the ego frame; voxel (i, j, k) spans
  `origin + [i, i+1) * voxel_size` along x (likewise y, z), `origin` = the point-cloud range's minimum.
* A `Camera` maps ego-frame metres to pixels like OpenCV: camera axes x right, y down, z forward;
  pixel (i, j) covers u in [i, i+1), v in [j, j+1) (as tools/visualize.py's projection), and is
  coloured by the ray through its centre (i + 0.5, j + 0.5).
* Shading is Lambertian per face direction: `FACE_SHADE[d]` = AMBIENT + (1 - AMBIENT) max(0, n_d . LIGHT)
  for the six outward normals (order -x, +x, -y, +y, -z, +z), so the colour of a face is its class
  colour scaled by one factor in (0, 1] (its hue is the class's). Voxel edges nearer than about one
  pixel are darkened by EDGE_SHADE where a voxel spans at least EDGE_MIN_PIXELS pixels, so that cubes
  read as cubes; farther away they would only add noise.

    cam = chase_camera(bench.point_cloud_range, (360, 640))
    image, depth = render_occupancy(labels, cam, origin=bench.point_cloud_range[:3],
                                    voxel_size=bench.voxel_size, free_label=bench.free_label, palette=palette)
"""
from dataclasses import dataclass

import numpy as np

__all__ = ['Camera', 'look_at', 'chase_camera', 'birds_eye_camera', 'Faces', 'surface_faces', 'box_faces',
           'render_faces', 'render_occupancy', 'class_palette', 'GridShapeError', 'FACE_NORMALS', 'FACE_SHADE',
           'LIGHT', 'AMBIENT', 'EDGE_SHADE', 'BACKGROUND', 'EGO_COLOUR']

# Outward normals of the six face directions: index d = 2 * axis + (1 if the normal points to +axis).
FACE_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float64)
# Light from above, in front and to the left of the ego: tops brightest, then the faces looking back
# (what a chase camera sees), the left/right sides apart, bottoms darkest.
LIGHT = np.array([-0.35, 0.5, 0.8]) / np.linalg.norm([-0.35, 0.5, 0.8])
AMBIENT = 0.45
FACE_SHADE = AMBIENT + (1.0 - AMBIENT) * np.clip(FACE_NORMALS @ LIGHT, 0.0, None)
EDGE_SHADE = 0.6          # factor of a pixel on a voxel edge
EDGE_MIN_PIXELS = 6.0     # edges are drawn where a voxel is at least this many pixels wide
BACKGROUND = (255, 255, 255)
EGO_COLOUR = (60, 60, 60)
NEAR = 0.05               # metres: nearer surfaces are not drawn
CHUNK = 1 << 21           # (face, pixel) candidates processed at once (~100 MB of temporaries)

# The Occ3D-nuScenes colours (class ids 0..16); other benchmarks take them in order, then generated ones.
OCC_PALETTE = np.array([
    [0, 0, 0], [255, 120, 50], [255, 192, 203], [255, 255, 0], [0, 150, 245], [0, 255, 255],
    [200, 180, 0], [255, 0, 0], [255, 240, 150], [135, 60, 0], [160, 32, 240], [255, 0, 255],
    [139, 137, 137], [75, 0, 75], [150, 240, 80], [230, 230, 250], [0, 175, 0],
], dtype=np.uint8)
FREE_COLOUR = (255, 255, 255)


class GridShapeError(ValueError):
    """A grid that is not a 3D label array (or not of the benchmark's shape); the message names it."""
    user_error = True  # engine/cli.py prints the message without a traceback


def class_palette(num_classes):
    """uint8 [K + 1, 3]: a colour per class id 0..K-1 (OCC_PALETTE first, then evenly spread hues), free last."""
    import colorsys
    extra = max(0, num_classes - len(OCC_PALETTE))
    # golden-ratio hue steps keep generated colours apart from each other
    generated = [[round(255 * c) for c in colorsys.hsv_to_rgb((0.13 + 0.618034 * i) % 1.0, 0.75, 0.9)]
                 for i in range(extra)]
    colours = np.concatenate([OCC_PALETTE[:num_classes], np.array(generated, np.uint8).reshape(-1, 3)])
    return np.concatenate([colours, np.array([FREE_COLOUR], np.uint8)])


# ------------------------------------------------------------------------------------------ cameras
@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking at the ego frame.

    Args:
        world2cam (array): float64 [4, 4], ego frame (metres) -> camera frame (x right, y down, z forward).
        intrinsic (array): float64 [3, 3], camera frame -> pixels (u d, v d, d).
        size (tuple[int]): (height, width) in pixels.
    """
    world2cam: np.ndarray
    intrinsic: np.ndarray
    size: tuple

    @property
    def eye(self):
        """The camera centre [3] in the ego frame."""
        rotation, translation = self.world2cam[:3, :3], self.world2cam[:3, 3]
        return -rotation.T @ translation

    def scaled(self, factor):
        """The same view at `factor` times the resolution (for supersampling)."""
        intrinsic = np.array(self.intrinsic, dtype=np.float64)
        intrinsic[:2] *= factor
        return Camera(self.world2cam, intrinsic, (self.size[0] * factor, self.size[1] * factor))

    def pixel_rays(self):
        """Ray directions [H, W, 3] (ego frame) through the pixel centres, scaled to unit depth.

        A point at ray parameter t is `eye + t * direction` and lies at depth t in front of the camera.
        """
        height, width = self.size
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        pixels = np.stack([u, v, np.ones_like(u)], axis=-1)
        in_camera = pixels @ np.linalg.inv(self.intrinsic).T          # z = 1
        return in_camera @ self.world2cam[:3, :3]                     # rotate to the ego frame (R^T d)


def look_at(eye, target, size, fov_deg=60.0, up=(0.0, 0.0, 1.0)):
    """Camera at `eye` looking at `target` (ego frame, metres), `up` upwards in the image.

    Args:
        size (tuple[int]): (height, width) pixels.
        fov_deg (float): horizontal field of view; square pixels, principal point at the image centre.
    """
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f'look_at: up {tuple(up)} is parallel to the viewing direction {tuple(forward)}')
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    world2cam = np.eye(4)
    world2cam[:3, :3] = np.stack([right, down, forward])
    world2cam[:3, 3] = -world2cam[:3, :3] @ eye
    height, width = size
    focal = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    intrinsic = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Camera(world2cam, intrinsic, (int(height), int(width)))


def _ego_and_extent(pc_range):
    """Ego position (grid centre in x and y, z = 0 of the ego frame) and the half extent along x."""
    lo, hi = np.asarray(pc_range[:3], np.float64), np.asarray(pc_range[3:], np.float64)
    centre = (lo + hi) / 2
    return np.array([centre[0], centre[1], 0.0]), (hi[0] - lo[0]) / 2


def chase_camera(pc_range, size, back=0.4, height=0.4, ahead=0.25, fov_deg=70.0):
    """Behind and above the ego, looking forward and down along +x.

    Distances are fractions of the grid's half extent along x (40 m for Occ3D-nuScenes: 16 m back,
    16 m up, looking at a point 10 m ahead on the ego's ground), so other grids get the same view.
    """
    ego, half = _ego_and_extent(pc_range)
    eye = ego + [-back * half, 0.0, height * half]
    target = ego + [ahead * half, 0.0, 0.0]
    return look_at(eye, target, size, fov_deg)


def birds_eye_camera(pc_range, size, fov_deg=40.0):
    """High above the grid centre, looking straight down, +x (forward) up in the image, +y to the left.

    The height makes the whole grid's top fit the smaller image side; sides of tall voxels show near
    the picture's borders (perspective), which keeps their height readable.
    """
    ego, _ = _ego_and_extent(pc_range)
    lo, hi = np.asarray(pc_range[:3], np.float64), np.asarray(pc_range[3:], np.float64)
    height, width = size
    half_fov = np.radians(fov_deg) / 2            # horizontal
    half_fov_v = np.arctan(np.tan(half_fov) * height / width)
    # x spans the image's height, y its width
    distance = max((hi[0] - lo[0]) / 2 / np.tan(half_fov_v), (hi[1] - lo[1]) / 2 / np.tan(half_fov))
    centre = np.array([ego[0], ego[1], hi[2]])
    return look_at(centre + [0.0, 0.0, distance], centre, size, fov_deg, up=(1.0, 0.0, 0.0))


# ------------------------------------------------------------------------------------------ faces
@dataclass
class Faces:
    """Axis-aligned rectangles (voxel faces) to draw, F of them.

    Args:
        direction (array): int [F], the outward normal's index into FACE_NORMALS (2 axis + positive).
        plane (array): float64 [F], the face's coordinate along its normal's axis (metres).
        lo, hi (array): float64 [F, 2], its extent along the two other axes in increasing axis order.
        colour (array): uint8 [F, 3], RGB before shading.
    """
    direction: np.ndarray
    plane: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    colour: np.ndarray

    def __len__(self):
        return len(self.direction)

    @staticmethod
    def concatenate(parts):
        return Faces(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                       ('direction', 'plane', 'lo', 'hi', 'colour')))


_OTHER_AXES = np.array([[1, 2], [0, 2], [0, 1]])    # the axes spanning a face, by the axis of its normal


def surface_faces(labels, free_label, origin, voxel_size, palette, mask=None):
    """The faces between an occupied voxel and a free one (or the grid's border), in class colours.

    Args:
        labels (array): integer [X, Y, Z] class ids; `free_label` marks an empty voxel.
        origin (sequence): the grid's minimum corner (x, y, z) in metres.
        voxel_size (float | sequence): metres per voxel along x, y, z.
        palette (array): uint8 [>= K, 3] colour per class id.
        mask (array | None): bool [X, Y, Z]; voxels where it is false are drawn as free.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise GridShapeError(f'an occupancy grid must be an integer [X, Y, Z] label array, got {labels.dtype} '
                             f'{list(labels.shape)}')
    occupied = labels != free_label
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != labels.shape:
            raise GridShapeError(f'the mask is {list(mask.shape)}, the grid {list(labels.shape)}: they must match')
        occupied &= mask
    present = np.unique(labels[occupied])
    if len(present) and present.max() >= len(palette):
        raise GridShapeError(f'the grid holds class id {int(present.max())} but the palette has {len(palette)} '
                             f'colours (free label {free_label}): is it a grid of another benchmark?')
    origin = np.asarray(origin, dtype=np.float64)
    size = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    padded = np.pad(occupied, 1, constant_values=False)
    parts = []
    for axis in range(3):
        for positive in (False, True):
            step = [0, 0, 0]
            step[axis] = 1 if positive else -1
            neighbour = padded[tuple(slice(1 + s, padded.shape[a] - 1 + s) for a, s in enumerate(step))]
            index = np.argwhere(occupied & ~neighbour)                        # [F, 3]
            a1, a2 = _OTHER_AXES[axis]
            corner = origin + index * size                                    # voxel minimum corners
            parts.append(Faces(
                direction=np.full(len(index), 2 * axis + positive, np.int64),
                plane=corner[:, axis] + (size[axis] if positive else 0.0),
                lo=corner[:, [a1, a2]], hi=corner[:, [a1, a2]] + size[[a1, a2]],
                colour=palette[labels[tuple(index.T)]]))
    return Faces.concatenate(parts)


def box_faces(lo, hi, colour):
    """The six faces of the axis-aligned box [lo, hi] (metres), in one colour."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    direction = np.arange(6)
    axis = direction // 2
    plane = np.where(direction % 2 == 1, hi[axis], lo[axis])
    other = _OTHER_AXES[axis]
    return Faces(direction, plane, lo[other], hi[other], np.tile(np.asarray(colour, np.uint8), (6, 1)))


# ------------------------------------------------------------------------------------------ raster
def _face_corners(faces):
    """Ego-frame corners [F, 4, 3] of each face, in order around it."""
    axis = faces.direction // 2
    corners = np.empty((len(faces), 4, 3))
    rows = np.arange(len(faces))
    a1, a2 = _OTHER_AXES[axis].T
    for k, (s1, s2) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
        corners[rows, k, axis] = faces.plane
        corners[rows, k, a1] = np.where(s1, faces.hi[:, 0], faces.lo[:, 0])
        corners[rows, k, a2] = np.where(s2, faces.hi[:, 1], faces.lo[:, 1])
    return corners


def _pixel_boxes(faces, camera):
    """Inclusive pixel ranges (u0, u1, v0, v1) [F] whose centres a face may cover; u1 < u0 when none.

    The face is clipped at the near plane (corners in front, plus the points where its edges cross
    the plane), so faces that reach behind the camera get a finite box.
    """
    corners = _face_corners(faces) @ camera.world2cam[:3, :3].T + camera.world2cam[:3, 3]   # [F, 4, 3]
    a, b = corners, np.roll(corners, -1, axis=1)                                            # the 4 edges
    crosses = (a[..., 2] > NEAR) != (b[..., 2] > NEAR)
    with np.errstate(divide='ignore', invalid='ignore'):
        w = np.where(crosses, (NEAR - a[..., 2]) / (b[..., 2] - a[..., 2]), 0.0)
    on_plane = a + w[..., None] * (b - a)
    points = np.concatenate([corners, on_plane], axis=1)                                    # [F, 8, 3]
    valid = np.concatenate([corners[..., 2] > NEAR, crosses], axis=1)
    depth = np.where(valid, points[..., 2], 1.0)
    k = camera.intrinsic
    u = k[0, 0] * points[..., 0] / depth + k[0, 2]
    v = k[1, 1] * points[..., 1] / depth + k[1, 2]
    u_min, u_max = np.where(valid, u, np.inf).min(1), np.where(valid, u, -np.inf).max(1)
    v_min, v_max = np.where(valid, v, np.inf).min(1), np.where(valid, v, -np.inf).max(1)
    height, width = camera.size
    with np.errstate(invalid='ignore'):
        # pixel i's centre i + 0.5 lies in [min, max] for ceil(min - 0.5) <= i <= floor(max - 0.5)
        u0 = np.clip(np.ceil(u_min - 0.5), 0, width)
        u1 = np.clip(np.floor(u_max - 0.5), -1, width - 1)
        v0 = np.clip(np.ceil(v_min - 0.5), 0, height)
        v1 = np.clip(np.floor(v_max - 0.5), -1, height - 1)
    none = ~valid.any(1)
    u1[none] = -1
    return [np.nan_to_num(x, nan=-1).astype(np.int64) for x in (u0, u1, v0, v1)]


def render_faces(faces, camera, background=BACKGROUND, edges=True):
    """Rasterise `faces` seen by `camera` with a z-buffer.

    Each pixel shows the face its centre's ray meets first (ray-plane intersection inside the face's
    rectangle, depth > NEAR), coloured `colour * FACE_SHADE[direction]` (times EDGE_SHADE on a voxel edge).

    Returns:
        (image uint8 [H, W, 3], depth float64 [H, W] in metres along the optical axis, inf where nothing
        is hit, face index int64 [H, W], -1 where nothing is hit).
    """
    height, width = camera.size
    eye = camera.eye
    rays = camera.pixel_rays().reshape(-1, 3)
    zbuffer = np.full(height * width, np.inf)
    winner = np.full(height * width, -1, np.int64)
    axis = faces.direction // 2
    a1, a2 = _OTHER_AXES[axis].T
    # back faces: the camera is on the inner side of the face's plane
    sign = np.where(faces.direction % 2 == 1, 1.0, -1.0)
    front = sign * (eye[axis] - faces.plane) > 0
    u0, u1, v0, v1 = _pixel_boxes(faces, camera)
    count = np.where(front & (u1 >= u0) & (v1 >= v0), (u1 - u0 + 1) * (v1 - v0 + 1), 0)
    drawn = np.nonzero(count)[0]
    ends = np.cumsum(count[drawn])
    start = 0
    while start < len(drawn):
        # the faces whose candidates fit in one chunk (at least one face)
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + CHUNK, 'right')))
        sel = drawn[start:stop]
        n = count[sel]
        face = np.repeat(sel, n)
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        box_w = (u1 - u0 + 1)[face]
        pixel = (v0[face] + local // box_w) * width + u0[face] + local % box_w
        d = rays[pixel]
        ax = axis[face]
        with np.errstate(divide='ignore', invalid='ignore'):
            t = (faces.plane[face] - eye[ax]) / d[np.arange(len(face)), ax]
        h1 = eye[a1[face]] + t * d[np.arange(len(face)), a1[face]]
        h2 = eye[a2[face]] + t * d[np.arange(len(face)), a2[face]]
        inside = ((t > NEAR) & (h1 >= faces.lo[face, 0]) & (h1 <= faces.hi[face, 0])
                  & (h2 >= faces.lo[face, 1]) & (h2 <= faces.hi[face, 1]))
        face, pixel, t = face[inside], pixel[inside], t[inside]
        np.minimum.at(zbuffer, pixel, t)
        nearest = t == zbuffer[pixel]
        winner[pixel[nearest]] = face[nearest]
        start = stop
    hit = winner >= 0
    image = np.empty((height * width, 3), np.float64)
    image[:] = background
    f = winner[hit]
    shade = FACE_SHADE[faces.direction[f]]
    if edges:
        point = eye + zbuffer[hit, None] * rays[hit]
        p1, p2 = point[np.arange(len(f)), a1[f]], point[np.arange(len(f)), a2[f]]
        lo, hi = faces.lo[f], faces.hi[f]
        to_edge = np.minimum.reduce([p1 - lo[:, 0], hi[:, 0] - p1, p2 - lo[:, 1], hi[:, 1] - p2])   # metres
        pixel_metres = zbuffer[hit] / camera.intrinsic[0, 0]        # one pixel's footprint at that depth
        on_edge = (to_edge < 0.75 * pixel_metres) & (np.min(hi - lo, axis=1) >= EDGE_MIN_PIXELS * pixel_metres)
        shade = np.where(on_edge, shade * EDGE_SHADE, shade)
    image[hit] = faces.colour[f] * shade[:, None]
    image = np.round(image).astype(np.uint8).reshape(height, width, 3)
    return image, zbuffer.reshape(height, width), winner.reshape(height, width)


def render_occupancy(labels, camera, origin, voxel_size, free_label, palette, mask=None, ego_box=None,
                     background=BACKGROUND, edges=True, supersample=1):
    """Picture of an occupancy grid from `camera`: RGB uint8 [H, W, 3] and depth [H, W] (metres, inf: nothing).

    Args:
        labels, origin, voxel_size, free_label, palette, mask: as `surface_faces`.
        ego_box (tuple | None): ((x0, y0, z0), (x1, y1, z1)) metres: the ego vehicle, drawn in EGO_COLOUR.
        supersample (int): render at this factor of the resolution and average blocks (anti-aliasing);
            the depth is that of the blocks' first sub-pixel.
    """
    faces = surface_faces(labels, free_label, origin, voxel_size, palette, mask)
    if ego_box is not None:
        faces = Faces.concatenate([faces, box_faces(ego_box[0], ego_box[1], EGO_COLOUR)])
    s = int(supersample)
    image, depth, _ = render_faces(faces, camera.scaled(s) if s > 1 else camera, background, edges)
    if s > 1:
        height, width = camera.size
        image = np.round(image.reshape(height, s, width, s, 3).mean(axis=(1, 3))).astype(np.uint8)
        depth = depth[::s, ::s]
    return image, depth

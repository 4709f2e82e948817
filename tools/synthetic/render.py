"""Pinhole rendering of the world: exact ray casting per pixel, then class-wise shading.

Rays go through pixel centres (integer pixel coordinates, as for the intrinsics written to the
tables), so a 3D point projected with the written calibration lands on the pixel that shows it.
"""
import numpy as np

from .world import World, ground_hit

SUN = np.array([0.45, 0.35, 0.82]) / np.linalg.norm([0.45, 0.35, 0.82])
SKY_TOP, SKY_HORIZON = np.array([0.42, 0.62, 0.90]), np.array([0.82, 0.88, 0.95])
FOG_DIST = 260.0
NEAR = 0.05
FAR_CLIP = 250.0   # shapes farther than this are not drawn (the ground still is)


def pixel_rays(cam2global, intrinsic, width, height):
    """Unit ray directions [H, W, 3] in the global frame and the camera centre [3]."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    d_cam = pix @ np.linalg.inv(intrinsic).T
    d = d_cam @ cam2global[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return d, cam2global[:3, 3].copy()


def _screen_rect(world: World, i, global2cam, intrinsic, width, height):
    """Pixel rectangle (v0, v1, u0, u1) covering shape i, or None when it cannot be seen.

    Bounds the projection of the shape's oriented bounding box, clipped at the near plane (so that
    boxes beside or behind the camera do not cover the whole image).
    """
    c = global2cam[:3, :3] @ world.centre[i] + global2cam[:3, 3]
    r = world.radius[i]
    if c[2] + r <= NEAR or np.linalg.norm(c) - r > FAR_CLIP:
        return None
    fx, fy, cx, cy = intrinsic[0, 0], intrinsic[1, 1], intrinsic[0, 2], intrinsic[1, 2]
    # bounding sphere entirely outside one of the four side planes of the frustum
    for n in ((fx, 0, cx + 0.5), (-fx, 0, width - 0.5 - cx), (0, fy, cy + 0.5), (0, -fy, height - 0.5 - cy)):
        n = np.asarray(n, dtype=np.float64)
        if n @ c < -r * np.linalg.norm(n):
            return None
    corners = world.centre[i] + _unit_corners * world.half[i] @ _yaw_matrix(world.yaw[i]).T
    cam = corners @ global2cam[:3, :3].T + global2cam[:3, 3]
    front = cam[:, 2] > NEAR
    pts = [cam[front]]
    if not front.all():
        a, b = cam[_edges[:, 0]], cam[_edges[:, 1]]
        cross = (a[:, 2] > NEAR) != (b[:, 2] > NEAR)
        a, b = a[cross], b[cross]
        w = (NEAR - a[:, 2]) / (b[:, 2] - a[:, 2])
        pts.append(a + w[:, None] * (b - a))
    pts = np.concatenate(pts)
    if not len(pts):
        return None
    uv = pts[:, :2] / pts[:, 2:] * intrinsic[[0, 1], [0, 1]] + intrinsic[[0, 1], [2, 2]]
    u0, v0 = np.floor(uv.min(axis=0)).astype(int)
    u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + 1
    u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, width), min(v1, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


_unit_corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
_edges = np.array([(a, b) for a in range(8) for b in range(a + 1, 8)
                   if np.sum(_unit_corners[a] != _unit_corners[b]) == 1])


def _yaw_matrix(yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def render(world: World, cam2global, intrinsic, width, height, shade=True):
    """Render one camera.

    Args:
        cam2global: 4x4 camera (OpenCV axes) -> global transform; intrinsic: 3x3.
    Returns:
        rgb uint8 [H, W, 3] (None when shade=False), distance along the ray float32 [H, W] in
        metres (inf = sky), sid int32 [H, W] (-1 sky, -2 ground, else shape index).
    """
    dirs, origin = pixel_rays(cam2global, intrinsic, width, height)
    flat = dirs.reshape(-1, 3)
    t, sid, normal = ground_hit(np.broadcast_to(origin, flat.shape), flat, max_dist=1000.0)
    t, sid, normal = t.reshape(height, width), sid.reshape(height, width), normal.reshape(height, width, 3)
    global2cam = np.linalg.inv(cam2global)
    # front to back, so that shapes hidden behind nearer ones are skipped by the depth check
    order = np.argsort(np.linalg.norm(world.centre - origin, axis=1) - world.radius)
    for i in order:
        rect = _screen_rect(world, i, global2cam, intrinsic, width, height)
        if rect is None:
            continue
        v0, v1, u0, u1 = rect
        if t[v0:v1, u0:u1].max() < np.linalg.norm(world.centre[i] - origin) - world.radius[i]:
            continue
        sub = dirs[v0:v1, u0:u1].reshape(-1, 3)
        ti, ni = world.intersect(i, origin, sub)
        ti = ti.reshape(v1 - v0, u1 - u0)
        better = ti < t[v0:v1, u0:u1]
        if not better.any():
            continue
        t[v0:v1, u0:u1][better] = ti[better]
        sid[v0:v1, u0:u1][better] = i
        normal[v0:v1, u0:u1][better] = ni.reshape(v1 - v0, u1 - u0, 3)[better]
    if not shade:
        return None, t.astype(np.float32), sid.astype(np.int32)
    return shade_pixels(world, origin, dirs, t, sid, normal), t.astype(np.float32), sid.astype(np.int32)


def shade_pixels(world, origin, dirs, t, sid, normal):
    """Colour of every pixel: textured class colour x Lambert light, blended into fog, or sky."""
    h, w = t.shape
    rgb = np.empty((h, w, 3))
    sky = sid == -1
    elev = np.clip(dirs[..., 2], 0, 1)[..., None]
    rgb[sky] = (SKY_HORIZON + (SKY_TOP - SKY_HORIZON) * np.sqrt(elev))[sky]
    hit = ~sky
    p = origin + dirs[hit] * t[hit][:, None]
    col = np.empty((len(p), 3))
    ids = sid[hit]
    ground = ids == -2
    col[ground] = world.ground_colour(p[ground, 0], p[ground, 1])
    nrm = normal[hit]
    for i in np.unique(ids[~ground]):
        m = ids == i
        col[m] = world.shape_colour(i, p[m], nrm[m])
    light = 0.45 + 0.55 * np.clip(nrm @ SUN, 0, 1)
    col *= light[:, None]
    fog = np.exp(-t[hit] / FOG_DIST)[:, None]
    rgb[hit] = col * fog + SKY_HORIZON * (1 - fog)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)

"""Occ3D-style labels of the synthetic world: semantics, LiDAR and camera visibility masks, LiDAR points.

Grid (core/occ3d.py): point_cloud_range [-40, -40, -1, 40, 40, 5.4] m in the ego frame of the key
frame, voxel 0.4 m, arrays [200, 200, 16] indexed [x, y, z]; label 17 = free.

* semantics: a voxel takes the class of a shape if any of 2x2x2 sample points inside it lies in the
  shape (so thin things such as cones and trunks are not lost); the ground (global z = 0) labels the
  voxel layer that contains it; later (smaller, dynamic) shapes win over earlier (static) ones.
* mask_camera: a voxel is observed when its centre projects into one of the six key-frame images
  and is no farther along that pixel's ray than the rendered surface plus `VIS_TOL` (free space in
  front of surfaces, and the surface voxels themselves).
* mask_lidar: the same test against the depth panorama of a 32-beam spinning LiDAR at the key frame.
"""
import numpy as np

from core.occ3d import BENCHMARK as OCC3D
from core.occ3d import GRID_SHAPE as GRID
from core.occ3d import POINT_CLOUD_RANGE, VOXEL_SIZE

from .world import BARRIER, BICYCLE, FREE, MANMADE, PEDESTRIAN, TRAFFIC_CONE, VEGETATION, World

PC_RANGE = np.array(POINT_CLOUD_RANGE)
VOXEL = VOXEL_SIZE[0]  # cubic voxels
VIS_TOL = 0.4
LIDAR_ELEVATIONS = np.deg2rad(np.linspace(-30.67, 10.67, 32))
LIDAR_AZIMUTH_STEP = np.deg2rad(0.5)
LIDAR_MAX_RANGE = 70.0

# Paint order: big static structure first, small objects last (they win shared voxels).
_PRIORITY = {MANMADE: 0, VEGETATION: 1, BARRIER: 3, BICYCLE: 3, PEDESTRIAN: 4, TRAFFIC_CONE: 4}


def voxel_axes(grid=OCC3D):
    """Voxel-centre coordinates along x, y, z (metres, the grid's frame) of a benchmark's grid (cubic voxels)."""
    lo, voxel = np.array(grid.point_cloud_range[:3]), grid.voxel_size[0]
    return [lo[a] + (np.arange(grid.grid_shape[a]) + 0.5) * voxel for a in range(3)]


def voxel_centres(grid=OCC3D):
    """Grid-frame centres [X, Y, Z, 3] of all voxels (metres): [200, 200, 16, 3] for Occ3D-nuScenes."""
    return np.stack(np.meshgrid(*voxel_axes(grid), indexing='ij'), axis=-1)


def semantics(world: World, ego2global, grid=OCC3D):
    """uint8 [X, Y, Z] labels (Occ3D ids, 17 = free) in the frame of pose `ego2global` (4x4, planar: z and yaw
    only), on the grid of the benchmark description `grid` (Occ3D-nuScenes: [200, 200, 16] in the ego frame;
    nuScenes-Occupancy: tools/synthetic/nusc_occupancy.py passes its [512, 512, 40] grid and the LiDAR pose)."""
    shape, lo_range, voxel = grid.grid_shape, np.array(grid.point_cloud_range[:3]), grid.voxel_size[0]
    axes = voxel_axes(grid)
    sem = np.full(shape, FREE, dtype=np.uint8)
    # ground: one voxel layer per column, the one whose z-span contains global z = 0
    col = np.stack(np.meshgrid(axes[0], axes[1], axes[2][:1], indexing='ij'), axis=-1)[:, :, 0]
    col = col @ ego2global[:3, :3].T + ego2global[:3, 3]
    ground_z_ego = -ego2global[2, 3]
    k = int(np.floor((ground_z_ego - lo_range[2]) / voxel))
    if 0 <= k < shape[2]:
        sem[:, :, k] = world.ground_class(col[..., 0], col[..., 1])
    global2ego = np.linalg.inv(ego2global)
    # 2 x 2 x 2 sample points per voxel, a quarter voxel from its centre (+-0.1 m for 0.4 m voxels)
    q = voxel / 4
    offsets = np.array([[x, y, z] for x in (-q, q) for y in (-q, q) for z in (-q, q)])
    order = sorted(range(len(world)), key=lambda i: (_PRIORITY.get(int(world.label[i]), 2), i))
    for i in order:
        c = global2ego[:3, :3] @ world.centre[i] + global2ego[:3, 3]
        rxy, hz = np.hypot(world.half[i, 0], world.half[i, 1]), world.half[i, 2]
        lo = np.floor((c - (rxy, rxy, hz) - lo_range) / voxel).astype(int)
        hi = np.floor((c + (rxy, rxy, hz) - lo_range) / voxel).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
        if np.any(lo >= hi):
            continue
        sub = np.stack(np.meshgrid(axes[0][lo[0]:hi[0]], axes[1][lo[1]:hi[1]], axes[2][lo[2]:hi[2]], indexing='ij'),
                       axis=-1)
        pts = (sub[..., None, :] + offsets) @ ego2global[:3, :3].T + ego2global[:3, 3]
        inside = world.inside(i, pts).any(axis=-1)
        sem[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = world.label[i]
    return sem


def camera_mask(cam_views, ego2global):
    """bool [200, 200, 16]: voxels observed by at least one camera.

    Args:
        cam_views: list of (cam2global 4x4, intrinsic 3x3, distance map [H, W] along pixel rays,
            inf = sky) of the key-frame images.
        ego2global: 4x4 pose of the key frame (the grid's frame).
    """
    pts = voxel_centres().reshape(-1, 3) @ ego2global[:3, :3].T + ego2global[:3, 3]
    seen = np.zeros(len(pts), dtype=bool)
    for cam2global, intrinsic, dist in cam_views:
        h, w = dist.shape
        g2c = np.linalg.inv(cam2global)
        pc = pts @ g2c[:3, :3].T + g2c[:3, 3]
        z = pc[:, 2]
        front = z > 0.1
        u = np.full(len(pts), -1, dtype=np.int64)
        v = np.full(len(pts), -1, dtype=np.int64)
        u[front] = np.round(intrinsic[0, 0] * pc[front, 0] / z[front] + intrinsic[0, 2]).astype(np.int64)
        v[front] = np.round(intrinsic[1, 1] * pc[front, 1] / z[front] + intrinsic[1, 2]).astype(np.int64)
        ok = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        rng = np.linalg.norm(pc[ok], axis=1)
        seen[np.nonzero(ok)[0][rng <= dist[v[ok], u[ok]] + VIS_TOL]] = True
    return seen.reshape(GRID)


def lidar_rays(lidar2global):
    """Ray directions [32 * n_az, 3] (global), their ring index and the LiDAR origin."""
    az = np.arange(0, 2 * np.pi, LIDAR_AZIMUTH_STEP)
    el, azg = np.meshgrid(LIDAR_ELEVATIONS, az, indexing='ij')
    d_lidar = np.stack([np.cos(el) * np.cos(azg), np.cos(el) * np.sin(azg), np.sin(el)], axis=-1).reshape(-1, 3)
    ring = np.repeat(np.arange(len(LIDAR_ELEVATIONS)), len(az))
    return d_lidar @ lidar2global[:3, :3].T, ring, lidar2global[:3, 3].copy()


def lidar_scan(world: World, lidar2global):
    """Cast the LiDAR. Returns (points [N, 5] float32 in the LiDAR frame: x, y, z, intensity, ring;
    distance panorama [32, n_az] (inf = no return))."""
    dirs, ring, origin = lidar_rays(lidar2global)
    t, sid, _ = world.cast(origin, dirs, max_dist=LIDAR_MAX_RANGE)
    hit = t < LIDAR_MAX_RANGE
    p_global = origin + dirs[hit] * t[hit, None]
    g2l = np.linalg.inv(lidar2global)
    p = p_global @ g2l[:3, :3].T + g2l[:3, 3]
    # intensity: a per-class reflectivity, ground darker than objects
    intensity = np.where(sid[hit] == -2, 8.0, 30.0)
    points = np.concatenate([p, intensity[:, None], ring[hit, None].astype(np.float64)], axis=1).astype(np.float32)
    return points, np.where(hit, t, np.inf).reshape(len(LIDAR_ELEVATIONS), -1)


def lidar_mask(panorama, lidar2global, ego2global):
    """bool [200, 200, 16]: voxels whose centre lies in front of the LiDAR return of the nearest beam."""
    pts = voxel_centres().reshape(-1, 3) @ ego2global[:3, :3].T + ego2global[:3, 3]
    g2l = np.linalg.inv(lidar2global)
    p = pts @ g2l[:3, :3].T + g2l[:3, 3]
    rng = np.linalg.norm(p, axis=1)
    el = np.arcsin(np.clip(p[:, 2] / np.maximum(rng, 1e-9), -1, 1))
    az = np.arctan2(p[:, 1], p[:, 0]) % (2 * np.pi)
    step = LIDAR_ELEVATIONS[1] - LIDAR_ELEVATIONS[0]
    k = np.round((el - LIDAR_ELEVATIONS[0]) / step).astype(np.int64)
    a = np.round(az / LIDAR_AZIMUTH_STEP).astype(np.int64) % panorama.shape[1]
    ok = (k >= 0) & (k < len(LIDAR_ELEVATIONS))
    seen = np.zeros(len(pts), dtype=bool)
    seen[ok] = rng[ok] <= panorama[k[ok], a[ok]] + VIS_TOL
    return seen.reshape(GRID)

"""tools/occ_render.py and the 3D commands of tools/visualize.py (render, video).

The renderer is checked pixel by pixel against an independent float64 ray caster written here (the
slab test of every occupied voxel as a box: the nearest entry wins), on a small grid seen by a
hand-built pinhole camera: coverage (free space stays background), class colours and face shading,
occlusion, depth; then the cameras, the figure and video commands (on a small made-up benchmark) and
their one-line errors.
"""
import math
import pickle

import numpy as np
import pytest
from PIL import Image

from camera_rig import pinhole_rig
from engine.cli import run_main
from tools import occ_render as R
from tools import visualize as vis
from tools.video import VideoError, write_video
from toy_benchmark import register_toy, toy

PALETTE = R.class_palette(17)
FREE = 17
CAR, PEDESTRIAN, VEGETATION, TRUCK = 4, 7, 16, 10

# The grid: 24 x 12 x 6 voxels of 0.5 m from (-6, -3, -0.5) m.
SHAPE, VOXEL, ORIGIN = (24, 12, 6), 0.5, np.array([-6.0, -3.0, -0.5])
# Voxel A (12, 7, 2) and voxel B (15, 7, 0) lie on one line through the camera centre, B behind A.
A, B = (12, 7, 2), (15, 7, 0)


def centre(index):
    return ORIGIN + (np.asarray(index) + 0.5) * VOXEL


A_C, B_C = centre(A), centre(B)                      # (0.25, 0.75, 0.75), (1.75, 0.75, -0.25)
EYE = A_C - 2.0 * (B_C - A_C)                        # (-2.75, 0.75, 2.75): no voxel boundary passes through it
H, W, FOCAL, CX, CY = 80, 120, 100.0, 60.0, 40.0


def hand_camera():
    """Looking from EYE at B (pitch atan(3 / 4.5) down, along +x): right = -y, down and forward by hand."""
    c, s = 4.5 / math.sqrt(29.25), 3.0 / math.sqrt(29.25)
    rotation = np.array([[0.0, -1.0, 0.0],          # right
                         [-s, 0.0, -c],             # down = forward x right
                         [c, 0.0, -s]])             # forward
    world2cam = np.eye(4)
    world2cam[:3, :3] = rotation
    world2cam[:3, 3] = -rotation @ EYE
    return R.Camera(world2cam, np.array([[FOCAL, 0, CX], [0, FOCAL, CY], [0, 0, 1.0]]), (H, W))


def scene_grid():
    """A, B, a wall on the left that reaches behind the camera, a tree block on the right, a voxel at the border."""
    grid = np.full(SHAPE, FREE, np.uint8)
    grid[A] = CAR
    grid[12:14, 6:8, 0:2] = CAR                      # A's block below it
    grid[B] = PEDESTRIAN
    grid[15, 7, 1] = PEDESTRIAN
    grid[:, 10:12, 0:2] = TRUCK                      # the wall: x from -6 m (behind the camera) to 6 m
    grid[18:20, 2:4, 0:4] = VEGETATION
    grid[23, 5, 0] = CAR                             # touches the grid's +x and -z borders
    return grid


def project(point, camera):
    """Pixel (column, row) and depth of a point: float64 pinhole, pixel (i, j) covers u in [i, i+1)."""
    p = camera.world2cam[:3, :3] @ point + camera.world2cam[:3, 3]
    u = camera.intrinsic[0, 0] * p[0] / p[2] + camera.intrinsic[0, 2]
    v = camera.intrinsic[1, 1] * p[1] / p[2] + camera.intrinsic[1, 2]
    return int(math.floor(u)), int(math.floor(v)), p[2]


def reference_cast(grid, camera, offsets=(0.5,), origin=ORIGIN, voxel_size=VOXEL):
    """The independent ray caster: for every pixel (i, j) and sub-pixel offsets o, o' the ray through
    (i + o, j + o'), scaled to unit depth, against the slab test of every occupied voxel.

    Returns (class, face direction, depth, ambiguous), each [H * s, W * s] with s = len(offsets): class FREE
    where no voxel is hit; the face direction indexes R.FACE_NORMALS (the face the ray enters through);
    `ambiguous` marks rays within EPS of a voxel edge or of a second voxel's entry (either may win).
    """
    eps = 1e-9   # metres: float64 rounding of intersections a few metres away is ~1e-15 m
    idx = np.argwhere(grid != FREE)
    lo, hi = origin + idx * voxel_size, origin + (idx + 1) * voxel_size              # [V, 3]
    height, width = camera.size
    u = (np.arange(width)[:, None] + np.asarray(offsets)[None]).reshape(-1)
    v = (np.arange(height)[:, None] + np.asarray(offsets)[None]).reshape(-1)
    k, rot = camera.intrinsic, camera.world2cam[:3, :3]
    eye = -rot.T @ camera.world2cam[:3, 3]
    rows = []
    for v_rows in np.array_split(v, max(1, len(v) // 16)):                           # bounded memory
        uu, vv = np.meshgrid(u, v_rows)
        d_cam = np.stack([(uu - k[0, 2]) / k[0, 0], (vv - k[1, 2]) / k[1, 1], np.ones_like(uu)], -1)
        d = d_cam @ rot                                                               # [h, w, 3], z_cam = 1
        with np.errstate(divide='ignore', invalid='ignore'):
            t1 = (lo - eye) / d[:, :, None]
            t2 = (hi - eye) / d[:, :, None]
        t_in, t_out = np.minimum(t1, t2), np.maximum(t1, t2)                           # [h, w, V, 3]
        entry, leave = t_in.max(-1), t_out.min(-1)
        hit = (entry <= leave) & (entry > R.NEAR)
        entry_hit = np.where(hit, entry, np.inf)
        best = entry_hit.argmin(-1)
        depth = np.take_along_axis(entry_hit, best[..., None], -1)[..., 0]
        found = np.isfinite(depth)
        voxel = idx[best]
        cls = np.where(found, grid[voxel[..., 0], voxel[..., 1], voxel[..., 2]], FREE)
        axis = np.take_along_axis(t_in, best[..., None, None], 2)[:, :, 0].argmax(-1)
        d_axis = np.take_along_axis(d, axis[..., None], -1)[..., 0]
        direction = 2 * axis + (d_axis < 0)
        second = np.sort(entry_hit, -1)[..., 1]
        near_edge = np.abs(np.take_along_axis(leave, best[..., None], -1)[..., 0] - depth) < eps
        grazing = (np.abs(entry - leave) < eps).any(-1)       # touching a voxel's edge without entering it
        with np.errstate(invalid='ignore'):                   # inf - inf where no voxel is hit
            ambiguous = (found & (near_edge | (second - depth < eps))) | grazing
        rows.append((cls, direction, depth, ambiguous))
    return tuple(np.concatenate(parts) for parts in zip(*rows))


def hue_matches(pixel, colour):
    """`pixel` = round(f * colour) for one factor f > 0: the least-squares f leaves at most 0.5 sqrt(3)
    per channel (the uint8 rounding error, at most 0.5 a channel, minus its part along `colour`)."""
    p, q = np.asarray(colour, np.float64), np.asarray(pixel, np.float64)
    f = (q @ p) / (p @ p)
    return f > 0 and np.abs(q - f * p).max() <= 0.5 * math.sqrt(3)


# ------------------------------------------------------------------------------------------ renderer
def test_face_shading_is_the_documented_lambert_term():
    light = np.array([-0.35, 0.5, 0.8]) / np.linalg.norm([-0.35, 0.5, 0.8])
    normals = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
    expected = [0.45 + 0.55 * max(0.0, float(np.dot(n, light))) for n in normals]
    np.testing.assert_allclose(R.FACE_SHADE, expected, rtol=1e-15)   # float64, the same few operations
    assert R.FACE_SHADE[5] == max(R.FACE_SHADE) and R.FACE_SHADE[4] == R.AMBIENT   # tops lit, bottoms ambient


def test_every_pixel_shows_the_nearest_voxel_face_of_an_independent_ray_caster():
    grid, camera = scene_grid(), hand_camera()
    image, depth = R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE, edges=False)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    cls, direction, ref_depth, ambiguous = reference_cast(grid, camera)
    clear = ~ambiguous
    assert ambiguous.sum() < 0.02 * H * W
    # free space stays background, hit pixels are not
    free = clear & (cls == FREE)
    assert free.sum() > 1000 and (cls[clear] != FREE).sum() > 1000          # both kinds are well represented
    assert np.all(image[free] == R.BACKGROUND) and np.all(np.isinf(depth[free]))
    # each hit pixel: its voxel's class colour times the shade of the face the ray entered, exactly
    hit = clear & (cls != FREE)
    expected = np.round(PALETTE[cls[hit]] * R.FACE_SHADE[direction[hit]][:, None]).astype(np.uint8)
    np.testing.assert_array_equal(image[hit], expected)
    # depth along the optical axis: float64 ray-plane intersections a few metres away agree to ~1e-15 m
    np.testing.assert_allclose(depth[hit], ref_depth[hit], rtol=0, atol=1e-9)
    # the scene shows at least three face directions (tops, fronts, the wall's side): the shape reads
    assert len(np.unique(direction[hit])) >= 3


def test_a_face_reaching_behind_the_camera_is_drawn_where_it_is_in_front():
    """2 m voxels: the camera hovers 0.25 m above the top face of one, which reaches 0.75 m behind it; the
    face must be clipped at the near plane, not dropped (it covers the bottom of the picture)."""
    origin, size = np.array([-4.0, -2.0, -1.5]), 2.0
    grid = np.full((4, 2, 2), FREE, np.uint8)
    grid[0, 1, 1] = TRUCK                                # [-4, -2] x [0, 2] x [0.5, 2.5]: the eye is above it
    grid[1:, :, 0] = VEGETATION
    camera = hand_camera()
    corners = np.array([[x, y, 2.5] for x in (-4.0, -2.0) for y in (0.0, 2.0)])
    depths = corners @ camera.world2cam[2, :3] + camera.world2cam[2, 3]
    assert depths.min() < 0 < depths.max()              # the top face straddles the camera plane
    image, depth = R.render_occupancy(grid, camera, origin, size, FREE, PALETTE, edges=False)
    cls, direction, ref_depth, ambiguous = reference_cast(grid, camera, origin=origin, voxel_size=size)
    assert (cls[~ambiguous] == TRUCK).sum() > 500
    clear = ~ambiguous
    expected = np.where((cls == FREE)[..., None], np.array(R.BACKGROUND, np.float64),
                        PALETTE[np.minimum(cls, FREE)] * R.FACE_SHADE[direction][..., None])
    np.testing.assert_array_equal(image[clear], np.round(expected[clear]).astype(np.uint8))
    np.testing.assert_allclose(depth[clear], ref_depth[clear], rtol=0, atol=1e-9)   # as above


def test_known_voxels_appear_where_a_pinhole_projects_them_and_nearer_ones_occlude():
    grid, camera = scene_grid(), hand_camera()
    image, depth = R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE)        # with voxel edges
    # A's centre: car; B's centre lies on the same line of sight behind A: car too (occluded)
    ua, va, da = project(A_C, camera)
    ub, vb, db = project(B_C, camera)
    assert (ua, va) == (ub, vb) and db > da
    assert hue_matches(image[va, ua], PALETTE[CAR]) and not hue_matches(image[va, ua], PALETTE[PEDESTRIAN])
    assert depth[va, ua] <= da                                       # the surface hit is A's, not B's
    # without A and its block, B shows at the same pixel, farther away
    no_a = grid.copy()
    no_a[12:14, 6:8, 0:3] = FREE
    image_b, depth_b = R.render_occupancy(no_a, camera, ORIGIN, VOXEL, FREE, PALETTE)
    assert hue_matches(image_b[vb, ub], PALETTE[PEDESTRIAN]) and da < depth_b[vb, ub] <= db
    # the tree block's top voxel and the border voxel, seen unoccluded at their projected centres
    for index, cls in (((18, 2, 3), VEGETATION), ((23, 5, 0), CAR)):
        u, v, z = project(centre(index), camera)
        assert 0 <= u < W and 0 <= v < H, index
        assert hue_matches(image[v, u], PALETTE[cls]), (index, image[v, u])
        assert depth[v, u] <= z < depth[v, u] + VOXEL * math.sqrt(3)   # the voxel's own surface
    # a pixel whose ray passes over everything to a point beyond the grid's far end is background
    u, v, _ = project(np.array([9.0, 0.75, -0.25]), camera)
    assert 0 <= u < W and 0 <= v < H
    assert tuple(image[v, u]) == R.BACKGROUND and np.isinf(depth[v, u])


def test_edges_darken_only_and_keep_the_hue():
    grid, camera = scene_grid(), hand_camera()
    plain, _ = R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE, edges=False)
    edged, _ = R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE, edges=True)
    cls, _, _, ambiguous = reference_cast(grid, camera)
    changed = np.any(plain != edged, -1)
    assert changed.any() and not changed[cls == FREE].any()
    for j, i in zip(*np.nonzero(changed & ~ambiguous)):
        assert np.all(edged[j, i] <= plain[j, i]) and hue_matches(edged[j, i], PALETTE[cls[j, i]])


def test_supersampled_pixels_inside_one_face_keep_its_colour():
    grid, camera = scene_grid(), hand_camera()
    image, depth = R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE, edges=False, supersample=2)
    assert image.shape == (H, W, 3) and depth.shape == (H, W)
    cls, direction, _, ambiguous = reference_cast(grid, camera, offsets=(0.25, 0.75))
    blocks = lambda a: a.reshape(H, 2, W, 2).transpose(0, 2, 1, 3).reshape(H, W, 4)   # noqa: E731
    c, d, amb = blocks(cls), blocks(direction), blocks(ambiguous)
    uniform = (c == c[..., :1]).all(-1) & (d == d[..., :1]).all(-1) & ~amb.any(-1)
    inside = uniform & (c[..., 0] != FREE)
    expected = np.round(PALETTE[c[..., 0][inside]] * R.FACE_SHADE[d[..., 0][inside]][:, None])
    np.testing.assert_array_equal(image[inside], expected)        # the mean of four equal values
    assert np.all(image[uniform & (c[..., 0] == FREE)] == R.BACKGROUND)


def test_chunked_rasterisation_gives_the_same_picture(monkeypatch):
    grid, camera = scene_grid(), hand_camera()
    image, depth = R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE)
    monkeypatch.setattr(R, 'CHUNK', 97)                  # many chunks, faces split across their boundaries
    image_c, depth_c = R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE)
    np.testing.assert_array_equal(image_c, image)
    np.testing.assert_array_equal(depth_c, depth)


def test_surface_faces_are_those_between_occupied_and_free():
    grid = np.full((4, 3, 2), 5, np.uint8)
    grid[1, 1, 0] = 0
    faces = R.surface_faces(grid, 5, (0, 0, 0), (0.5, 0.4, 0.25), PALETTE)
    assert len(faces) == 6
    grid[2, 1, 0] = 1                                     # a neighbour: the shared faces go
    assert len(R.surface_faces(grid, 5, (0, 0, 0), (0.5, 0.4, 0.25), PALETTE)) == 10
    grid[:] = 2                                           # the whole grid: only its border
    faces = R.surface_faces(grid, 5, (1.0, 2.0, 3.0), (0.5, 0.4, 0.25), PALETTE)
    assert len(faces) == 2 * (4 * 3 + 4 * 2 + 3 * 2)
    top = faces.direction == 5
    np.testing.assert_allclose(faces.plane[top], 3.0 + 2 * 0.25, rtol=1e-15)   # float64 sums of two decimals
    mask = np.zeros(grid.shape, bool)
    mask[0, 0, 0] = True
    assert len(R.surface_faces(grid, 5, (0, 0, 0), 0.5, PALETTE, mask=mask)) == 6


def test_bad_grids_are_named_in_one_line():
    camera = hand_camera()
    with pytest.raises(R.GridShapeError, match=r'\[X, Y, Z\] label array, got uint8 \[24, 12\]') as err:
        R.render_occupancy(np.zeros((24, 12), np.uint8), camera, ORIGIN, VOXEL, FREE, PALETTE)
    assert '\n' not in str(err.value)
    grid = scene_grid()
    grid[0, 0, 0] = 40
    with pytest.raises(R.GridShapeError, match='class id 40 but the palette has 18 colours'):
        R.render_occupancy(grid, camera, ORIGIN, VOXEL, FREE, PALETTE)
    with pytest.raises(R.GridShapeError, match=r'the mask is \[2, 2, 2\], the grid \[24, 12, 6\]'):
        R.render_occupancy(scene_grid(), camera, ORIGIN, VOXEL, FREE, PALETTE, mask=np.ones((2, 2, 2), bool))


# ------------------------------------------------------------------------------------------ cameras
def test_look_at_builds_the_hand_camera():
    camera = R.look_at(EYE, B_C, (H, W), fov_deg=2 * math.degrees(math.atan(CX / FOCAL)))
    np.testing.assert_allclose(camera.world2cam, hand_camera().world2cam, atol=1e-12)   # float64 cross products
    np.testing.assert_allclose(camera.intrinsic, hand_camera().intrinsic, rtol=1e-12)   # tan(atan(x)) in float64
    np.testing.assert_allclose(camera.eye, EYE, atol=1e-12)


def test_chase_and_birds_eye_cameras_frame_the_grid():
    pc_range = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
    chase = R.chase_camera(pc_range, (180, 320))
    assert chase.eye[0] < 0 and chase.eye[2] > 5.4 and abs(chase.eye[1]) < 1e-12       # behind, above
    u0, v0, d0 = project(np.array([0.0, 0.0, 0.0]), chase)          # the ego, in the lower half
    u1, v1, d1 = project(np.array([30.0, 0.0, 0.0]), chase)         # ahead: higher in the picture, farther
    u2, _, _ = project(np.array([10.0, 5.0, 0.0]), chase)           # to the left (+y): left in the picture
    assert 0 <= v1 < v0 < 180 and v0 > 90 and d1 > d0 > 0 and u0 == u1 == 160 and u2 < 160
    bev = R.birds_eye_camera(pc_range, (200, 200))
    corners = [project(np.array([x, y, 5.4]), bev) for x in (-39.9, 39.9) for y in (-39.9, 39.9)]
    assert all(0 <= u < 200 and 0 <= v < 200 for u, v, _ in corners)     # the whole grid's top in view
    front, back = project(np.array([20.0, 0.0, 0.0]), bev), project(np.array([-20.0, 0.0, 0.0]), bev)
    left, right = project(np.array([0.0, 20.0, 0.0]), bev), project(np.array([0.0, -20.0, 0.0]), bev)
    assert front[1] < back[1] and left[0] < right[0]                    # +x up, +y left


# ------------------------------------------------------------------------------------------ the picture
OCC3D = vis.DEFAULT


def occ3d_grid():
    """A 200 x 200 x 16 Occ3D grid: a 3 x 3 x 3 car block 10 m ahead of the ego, on the ground."""
    grid = np.full(OCC3D.grid_shape, OCC3D.free_label, np.uint8)
    grid[124:127, 99:102, 2:5] = CAR           # x 9.6..10.8 m, y -0.4..0.8 m, z -0.2..1.0 m
    return grid


def save_sparse(path, grid, free):
    loc = np.argwhere(grid != free)
    np.savez(path, sem_pred=grid[tuple(loc.T)].astype(np.uint8), occ_loc=loc.astype(np.uint8))
    return str(path)


def save_labels(path, grid, mask=None):
    mask = np.ones(grid.shape, bool) if mask is None else mask
    np.savez(path, semantics=grid, mask_lidar=mask, mask_camera=mask)
    return str(path)


def test_render_cli_puts_the_prediction_beside_the_ground_truth(tmp_path):
    width = 320
    pred = occ3d_grid()
    gt = pred.copy()
    gt[150:153, 60:63, 2:6] = VEGETATION                         # only in the ground truth
    out = vis.main(['render', '--pred', save_sparse(tmp_path / 'p.npz', pred, FREE), '--gt',
                    save_labels(tmp_path / 'labels.npz', gt), '--width', str(width), '--supersample', '1',
                    '--out', str(tmp_path / 'r.png')])
    figure = np.asarray(Image.open(out).convert('RGB'))
    chase_h = 2 * round(width * 9 / 32)
    legend_h = vis.legend(OCC3D, 2 * width).shape[0]
    cap = vis.CAPTION_HEIGHT
    assert figure.shape == (cap + (cap + chase_h) + (cap + width) + legend_h, 2 * width, 3)
    chase = figure[2 * cap:2 * cap + chase_h]
    bev = figure[3 * cap + chase_h:3 * cap + chase_h + width]
    np.testing.assert_array_equal(chase[:, :width], vis.render_view(pred, OCC3D, 'chase', width, supersample=1))
    np.testing.assert_array_equal(chase[:, width:], vis.render_view(gt, OCC3D, 'chase', width, supersample=1))
    np.testing.assert_array_equal(bev[:, width:], vis.render_view(gt, OCC3D, 'bev', width, supersample=1))
    # the car block where a float64 pinhole puts its top voxel's centre, in both chase panels
    camera = vis.view_camera('chase', OCC3D, width)
    top = np.asarray(OCC3D.point_cloud_range[:3]) + (np.array([125, 100, 4]) + 0.5) * 0.4
    u, v, _ = project(top, camera)
    assert hue_matches(chase[v, u], PALETTE[CAR]) and hue_matches(chase[v, width + u], PALETTE[CAR])
    # the tree only in the ground truth's bird's-eye panel, at its top's projection
    camera = vis.view_camera('bev', OCC3D, width)
    u, v, _ = project(np.asarray(OCC3D.point_cloud_range[:3]) + np.array([151.5, 61.5, 6]) * 0.4, camera)
    assert hue_matches(bev[v, width + u], PALETTE[VEGETATION]) and tuple(bev[v, u]) == R.BACKGROUND
    # the ground truth alone: one column
    out = vis.main(['render', '--gt', str(tmp_path / 'labels.npz'), '--views', 'bev', '--width', '96',
                    '--supersample', '1', '--out', str(tmp_path / 'gt.png')])
    figure = np.asarray(Image.open(out).convert('RGB'))
    assert figure.shape[1] == 96
    np.testing.assert_array_equal(figure[2 * cap:2 * cap + 96], vis.render_view(gt, OCC3D, 'bev', 96, supersample=1))


def test_camera_mask_hides_the_invisible_voxels_in_both_panels(tmp_path):
    grid = occ3d_grid()
    mask = np.ones(grid.shape, bool)
    mask[124:127, 99:102, :] = False                              # the car block is not seen by the cameras
    out = vis.main(['render', '--pred', save_labels(tmp_path / 'p.npz', grid), '--gt',
                    save_labels(tmp_path / 'labels.npz', grid, mask), '--camera-mask', '--views', 'bev',
                    '--width', '160', '--supersample', '1', '--out', str(tmp_path / 'r.png')])
    figure = np.asarray(Image.open(out).convert('RGB'))
    cap = vis.CAPTION_HEIGHT
    freed = grid.copy()
    freed[~mask] = FREE
    empty = vis.render_view(freed, OCC3D, 'bev', 160, supersample=1)     # the ego box alone
    np.testing.assert_array_equal(figure[2 * cap:2 * cap + 160], np.concatenate([empty, empty], axis=1))
    assert not hue_matches(empty.reshape(-1, 3)[np.argmax(empty.min(-1) < 255)], PALETTE[CAR])


@pytest.mark.parametrize('names, yaws, front_cell', [
    (('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT'),
     (0, -60, 60, 180, 120, -120), (0, 1)),                       # nuScenes: fronts on top, FRONT in the middle
    (('FRONT', 'FRONT_LEFT', 'FRONT_RIGHT', 'SIDE_LEFT', 'SIDE_RIGHT'), (0, 45, -45, 90, -90), (0, 0)),  # in order
])
def test_camera_panel_draws_voxel_centres_where_the_cameras_see_them(tmp_path, names, yaws, front_cell):
    ih, iw, focal = 90, 160, 120.0
    mats = pinhole_rig([0], list(yaws), ih, iw, focal, 0.0)               # cameras 1.5 m above the LiDAR
    images = {}
    for cam in names:
        images[cam] = str(tmp_path / f'{cam}.png')
        Image.fromarray(np.full((ih, iw, 3), 90, np.uint8)).save(images[cam])
    lidar2ego = np.eye(4)
    lidar2ego[:3, 3] = (0.5, 0.0, 1.0)
    sample = dict(images=images, lidar2img=dict(zip(names, mats)), lidar2ego=lidar2ego)
    canvas = vis.camera_panel(occ3d_grid(), sample, OCC3D, width=3 * iw)          # scale 1
    assert canvas.shape == (2 * ih, 3 * iw, 3)
    # voxel (125, 101, 2): ego (10.2, 0.6, 0.0) m = LiDAR (9.7, 0.6, -1.0) m; the front camera sits at z = 1.5
    x, y, z = 9.7, 0.6, -1.0 - 1.5
    u, v = iw / 2 + focal * (-y) / x, ih / 2 + focal * (-z) / x
    row, col = front_cell
    assert tuple(canvas[row * ih + int(v), col * iw + int(u)]) == tuple(PALETTE[CAR])
    assert not np.any(np.all(canvas[ih:] == PALETTE[CAR], -1))          # the second row does not see it
    if len(names) == 5:
        assert np.all(canvas[ih:, 2 * iw:] == 0)                          # the sixth cell stays empty


# ------------------------------------------------------------------------------------------ video
def hue(rgb):
    """HSV hue in degrees of uint8 RGB [..., 3]."""
    import colorsys
    return np.array([colorsys.rgb_to_hsv(*(c / 255.0))[0] * 360 for c in np.asarray(rgb, np.float64).reshape(-1, 3)])


def dominant_class(frame, candidates):
    """The candidate class whose hue most saturated pixels are nearest to. Saturation = max - min channel:
    the background, text and ego box are grey (0 up to codec noise of a few levels), the candidates' faces
    at least AMBIENT * their largest channel (0.45 * 175 = 79 for vegetation): 40 separates them."""
    pixels = frame.reshape(-1, 3).astype(np.int64)
    pixels = pixels[pixels.max(1) - pixels.min(1) > 40]
    h = hue(pixels)
    targets = hue(PALETTE[list(candidates)])
    gap = np.abs(h[:, None] - targets[None])
    nearest = np.minimum(gap, 360 - gap).argmin(1)
    return candidates[int(np.bincount(nearest, minlength=len(candidates)).argmax())]


def read_mp4(path):
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    w, h = meta['size']
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader], meta


def test_write_video_mp4_and_gif_hold_every_frame(tmp_path):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    frames = [np.full((50, 70, 3), c, np.uint8) for c in colours]
    assert write_video(iter(frames), str(tmp_path / 'v.mp4'), fps=4) == 5
    decoded, meta = read_mp4(str(tmp_path / 'v.mp4'))
    assert len(decoded) == 5 and meta['size'] == (80, 64)           # padded to 16-pixel blocks
    for frame, colour in zip(decoded, colours):
        # the frame's centre is nearest to its own colour among the five (H.264 is lossy, the order is not)
        mean = frame[10:40, 10:60].reshape(-1, 3).mean(0)
        assert int(np.argmin([np.abs(mean - c).sum() for c in colours])) == colours.index(colour)
    assert write_video(frames[:3], str(tmp_path / 'v.gif'), fps=4) == 3
    with Image.open(tmp_path / 'v.gif') as gif:
        assert gif.n_frames == 3
        for i, colour in enumerate(colours[:3]):
            gif.seek(i)
            assert gif.convert('RGB').getpixel((35, 25)) == colour    # one colour per frame: exact in a palette


def test_write_video_refuses_bad_frames(tmp_path):
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(VideoError, match='no frames'):
        write_video([], str(tmp_path / 'v.mp4'))
    with pytest.raises(VideoError, match=r'frame 1 is \[16, 32, 3\], the first \[32, 32, 3\]'):
        write_video([frame, frame[:16]], str(tmp_path / 'v.gif'))
    with pytest.raises(VideoError, match=r'unknown video type \.avi'):
        write_video([frame], str(tmp_path / 'v.avi'))


# A made-up benchmark for the video: 8 x 8 x 2 voxels of 2 x 2 x 1 m, the Occ3D class colours.
VIDEO_BENCH = toy(name='toy-video', class_names=tuple(f'class{i}' for i in range(17)), free_label=17,
                  grid_shape=(8, 8, 2), point_cloud_range=(-8.0, -8.0, -1.0, 8.0, 8.0, 1.0), voxel_size=(2.0, 2.0, 1.0))
# (token, scene, timestamp, class of the whole ground layer): time order within s1 is c, b, a; name order a, b, c, d
SAMPLES = (('tok-c', 's1', 100, VEGETATION), ('tok-a', 's1', 300, PEDESTRIAN), ('tok-b', 's1', 200, CAR),
           ('tok-d', 's2', 50, CAR))
CANDIDATES = (VEGETATION, CAR, PEDESTRIAN)


def write_scene(tmp_path):
    preds, gts = tmp_path / 'preds', tmp_path / 'gts'
    preds.mkdir()
    infos = []
    for token, scene, stamp, cls in SAMPLES:
        grid = np.full(VIDEO_BENCH.grid_shape, VIDEO_BENCH.free_label, np.uint8)
        grid[:, :, 0] = cls
        save_sparse(preds / f'{token}.npz', grid, VIDEO_BENCH.free_label)
        (gts / scene).mkdir(parents=True, exist_ok=True)
        np.savez(gts / scene / f'{token}.npz', semantics=grid)
        infos.append(dict(token=token, scene_name=scene, timestamp=stamp))
    with open(tmp_path / 'infos.pkl', 'wb') as f:
        pickle.dump(dict(infos=infos, metadata=dict(version='toy')), f)
    return str(preds), str(gts), str(tmp_path / 'infos.pkl')


def test_video_of_a_scene_follows_its_timestamps(tmp_path, monkeypatch):
    register_toy(monkeypatch, VIDEO_BENCH)
    preds, gts, infos = write_scene(tmp_path)
    common = ['video', '--pred-dir', preds, '--benchmark', 'toy-video', '--width', '160']
    out, count = vis.main(common + ['--info', infos, '--scene', 's1', '--out', str(tmp_path / 's1.mp4')])
    frames, meta = read_mp4(out)
    assert count == len(frames) == 3
    assert [dominant_class(f, CANDIDATES) for f in frames] == [VEGETATION, CAR, PEDESTRIAN]   # by time
    # without infos: every file of the folder, by name
    out, count = vis.main(common + ['--out', str(tmp_path / 'all.gif')])
    with Image.open(out) as gif:
        assert count == gif.n_frames == 4
        classes = []
        for i in range(4):
            gif.seek(i)
            classes.append(dominant_class(np.asarray(gif.convert('RGB')), CANDIDATES))
    assert classes == [PEDESTRIAN, CAR, VEGETATION, CAR]
    # with the ground truth: twice as wide
    out, _ = vis.main(common + ['--info', infos, '--scene', 's1', '--gt-root', gts, '--out', str(tmp_path / 'g.mp4')])
    assert read_mp4(out)[1]['size'][0] == 2 * meta['size'][0]


def one_line_error(argv):
    with pytest.raises(SystemExit) as err:
        run_main(vis.main, 'visualize.py', argv)
    message = str(err.value.code)
    assert message.startswith('visualize.py: error: ') and '\n' not in message, message
    return message


def test_bad_inputs_end_in_one_line_naming_them(tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    message = one_line_error(['video', '--pred-dir', str(empty), '--out', str(tmp_path / 'v.mp4')])
    assert f'{empty}: holds no <sample token>.npz predictions' in message and 'val.py --save-dir' in message
    message = one_line_error(['video', '--pred-dir', str(tmp_path / 'absent'), '--out', str(tmp_path / 'v.mp4')])
    assert 'prediction folder not found' in message and 'absent' in message
    # a grid of another shape than the benchmark's
    np.savez(tmp_path / 'small.npz', semantics=np.zeros((4, 4, 4), np.uint8))
    message = one_line_error(['render', '--pred', str(tmp_path / 'small.npz'), '--out', str(tmp_path / 'r.png')])
    assert f'{tmp_path / "small.npz"}: grid of shape [4, 4, 4]' in message and '[200, 200, 16]' in message
    assert '--benchmark' in message
    # a sparse prediction whose indices leave the grid
    np.savez(tmp_path / 'far.npz', sem_pred=np.array([4], np.uint8), occ_loc=np.array([[0, 0, 20]], np.int16))
    message = one_line_error(['render', '--pred', str(tmp_path / 'far.npz'), '--out', str(tmp_path / 'r.png')])
    assert 'far.npz' in message and 'outside the grid (200, 200, 16)' in message
    # a folder holding several scenes, no --scene; an unknown scene
    register_toy(monkeypatch, VIDEO_BENCH)
    preds, _, infos = write_scene(tmp_path)
    video = ['video', '--pred-dir', preds, '--info', infos, '--benchmark', 'toy-video',
             '--out', str(tmp_path / 'v.mp4')]
    assert 'holds predictions of 2 scenes (s1: 3, s2: 1); choose one with --scene' in one_line_error(video)
    assert 'has no scene s9 (it has s1, s2)' in one_line_error(video + ['--scene', 's9'])
    assert 'name it .mp4 (H.264) or .gif' in one_line_error(video[:-1] + [str(tmp_path / 'v.avi')])

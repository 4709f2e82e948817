"""A procedural street world made of labelled 3D shapes, and exact ray casting against it.

One world per scene: a road (straight or a gentle arc) on flat ground at global z = 0, with
driveable surface, sidewalks, terrain and paved patches (other_flat) on the ground, and solid
shapes standing on it: buildings, trees, bushes, parked and stopped cars, trucks, a bus,
pedestrians, traffic cones, barriers and bicycles. Every shape is a box, a vertical cylinder or an
ellipsoid with a yaw angle, a semantic class (Occ3D ids) and a colour pattern. The same geometry is
used to render the camera images, to cast the LiDAR and to label the occupancy grid, so the three
agree by construction.

Units: metres, radians; global frame = nuScenes global frame (z up).
"""
import numpy as np

from core.occ3d import FREE_LABEL, NUM_CLASSES

# Occ3D-nuScenes class ids by name, in core.occ3d.CLASS_NAMES order (tests/core/test_occ3d.py checks
# it); FREE = 17 (imported from here by occupancy.py, make_synthetic_nuscenes.py and the tests).
FREE = FREE_LABEL
OTHERS, BARRIER, BICYCLE, BUS, CAR, CONSTRUCTION_VEHICLE, MOTORCYCLE, PEDESTRIAN, TRAFFIC_CONE, \
    TRAILER, TRUCK, DRIVEABLE_SURFACE, OTHER_FLAT, SIDEWALK, TERRAIN, MANMADE, VEGETATION = range(NUM_CLASSES)

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
# Colour patterns (how a shape's base colour is textured).
PLAIN, FACADE, STRIPES_X, STRIPES_Z, FOLIAGE, GLASS = range(6)

ROAD_HALF_WIDTH = 5.0      # |d| < 5: driveable surface (two 3.5 m lanes + parking strips)
SIDEWALK_OUTER = 8.0       # 5 <= |d| < 8: sidewalk; beyond: terrain (or paved patches)
EGO_LANE_OFFSET = -1.75    # the ego drives in the right-hand lane
EPS = 1e-6


class Road:
    """Centre line of constant signed curvature kappa (1/m; 0 = straight, > 0 turns left).

    Frenet coordinates: s = arc length along the centre line from `origin`, d = signed lateral
    offset (positive to the left of the driving direction).
    """

    def __init__(self, origin, heading, curvature):
        self.origin = np.asarray(origin, dtype=np.float64)
        self.heading = float(heading)
        self.curvature = float(curvature)
        if abs(self.curvature) > 1e-9:
            r = 1.0 / self.curvature
            self.centre = self.origin + r * np.array([-np.sin(self.heading), np.cos(self.heading)])

    def point(self, s, d=0.0):
        """(x, y) and heading at arc length s and lateral offset d (arrays broadcast)."""
        s = np.asarray(s, dtype=np.float64)
        psi = self.heading + self.curvature * s
        if abs(self.curvature) > 1e-9:
            x = self.origin[0] + (np.sin(psi) - np.sin(self.heading)) / self.curvature
            y = self.origin[1] + (np.cos(self.heading) - np.cos(psi)) / self.curvature
        else:
            x = self.origin[0] + s * np.cos(psi)
            y = self.origin[1] + s * np.sin(psi)
        x = x - d * np.sin(psi)
        y = y + d * np.cos(psi)
        return np.stack([x, y], axis=-1), psi

    def frenet(self, x, y):
        """Global (x, y) arrays -> (s, d) arrays."""
        if abs(self.curvature) > 1e-9:
            dx, dy = x - self.centre[0], y - self.centre[1]
            rho = np.hypot(dx, dy)
            k = self.curvature
            d = (1.0 / abs(k) - rho) * np.sign(k)
            start = self.heading - np.pi / 2 * np.sign(k)
            ang = np.arctan2(dy, dx) - start
            ang = (ang + np.pi) % (2 * np.pi) - np.pi
            s = ang / k
            return s, d
        dx, dy = x - self.origin[0], y - self.origin[1]
        c, sn = np.cos(self.heading), np.sin(self.heading)
        return dx * c + dy * sn, -dx * sn + dy * c


class World:
    """A road, paved patches and a list of shapes.

    Shape arrays (S = number of shapes): kind [S] (BOX / CYLINDER / ELLIPSOID), centre [S, 3],
    half [S, 3] (box half-extents along its local x, y, z; cylinder (r, r, half-height);
    ellipsoid radii), yaw [S], label [S] (Occ3D id), colour [S, 3] (RGB in [0, 1]), pattern [S].
    Patches: [K, 5] rows (s0, s1, d0, d1, unused) of other_flat ground in Frenet coordinates.
    """

    def __init__(self, road, patches, kind, centre, half, yaw, label, colour, pattern):
        self.road = road
        self.patches = np.asarray(patches, dtype=np.float64).reshape(-1, 5)
        self.kind = np.asarray(kind, dtype=np.int64)
        self.centre = np.asarray(centre, dtype=np.float64).reshape(-1, 3)
        self.half = np.asarray(half, dtype=np.float64).reshape(-1, 3)
        self.yaw = np.asarray(yaw, dtype=np.float64)
        self.label = np.asarray(label, dtype=np.int64)
        self.colour = np.asarray(colour, dtype=np.float64).reshape(-1, 3)
        self.pattern = np.asarray(pattern, dtype=np.int64)
        self.radius = np.linalg.norm(self.half, axis=1)  # bounding-sphere radius
        self.cos_yaw, self.sin_yaw = np.cos(self.yaw), np.sin(self.yaw)

    def __len__(self):
        return len(self.kind)

    # ----------------------------------------------------------------------------- ground
    def ground_class(self, x, y):
        """Semantic class (uint8) of the ground at global (x, y) arrays."""
        s, d = self.road.frenet(x, y)
        ad = np.abs(d)
        cls = np.full(np.shape(x), TERRAIN, dtype=np.uint8)
        cls[ad < SIDEWALK_OUTER] = SIDEWALK
        for s0, s1, d0, d1, _ in self.patches:
            cls[(s >= s0) & (s < s1) & (d >= d0) & (d < d1) & (ad >= SIDEWALK_OUTER)] = OTHER_FLAT
        cls[ad < ROAD_HALF_WIDTH] = DRIVEABLE_SURFACE
        return cls

    def ground_colour(self, x, y):
        """RGB in [0, 1] of the ground at global (x, y): class colour, markings, world-fixed noise."""
        s, d = self.road.frenet(x, y)
        cls = self.ground_class(x, y)
        n = _noise2(x, y)
        rgb = np.empty(np.shape(x) + (3,))
        palette = {DRIVEABLE_SURFACE: (0.32, 0.32, 0.34), SIDEWALK: (0.68, 0.66, 0.62),
                   TERRAIN: (0.33, 0.50, 0.22), OTHER_FLAT: (0.62, 0.52, 0.40)}
        for c, col in palette.items():
            rgb[cls == c] = col
        rgb *= (0.85 + 0.3 * n)[..., None]
        ad = np.abs(d)
        road = cls == DRIVEABLE_SURFACE
        centre_dash = road & (ad < 0.08) & ((s % 6.0) < 3.0)
        edge_line = road & (ad > 4.75) & (ad < 4.9)
        rgb[centre_dash | edge_line] = (0.92, 0.92, 0.88)
        # sidewalk tiles: dark joints every 1.5 m along and across the walk
        tiles = (cls == SIDEWALK) & ((np.abs((s % 1.5) - 0.75) > 0.7) | (np.abs((ad % 1.5) - 0.75) > 0.7))
        rgb[tiles] *= 0.75
        return rgb

    # ----------------------------------------------------------------------------- shapes
    def to_local(self, i, points):
        """Global points [..., 3] -> local frame of shape i (centre at 0, yaw removed)."""
        p = points - self.centre[i]
        c, s = self.cos_yaw[i], self.sin_yaw[i]
        x, y = c * p[..., 0] + s * p[..., 1], -s * p[..., 0] + c * p[..., 1]
        return np.stack([x, y, p[..., 2]], axis=-1)

    def inside(self, i, points):
        """Boolean mask [...]: global points [..., 3] inside shape i."""
        q = self.to_local(i, points)
        h = self.half[i]
        if self.kind[i] == BOX:
            return np.all(np.abs(q) <= h, axis=-1)
        if self.kind[i] == CYLINDER:
            return (q[..., 0] ** 2 + q[..., 1] ** 2 <= h[0] ** 2) & (np.abs(q[..., 2]) <= h[2])
        return np.sum((q / h) ** 2, axis=-1) <= 1.0

    def intersect(self, i, origins, dirs):
        """Ray / shape i: origins [R, 3] (or [3]), unit dirs [R, 3] -> (t [R] (inf = miss), normal [R, 3])."""
        c, s = self.cos_yaw[i], self.sin_yaw[i]
        to_local = np.array([[c, s, 0.], [-s, c, 0.], [0., 0., 1.]])
        origins = np.asarray(origins, dtype=np.float64)
        if origins.ndim == 1:
            ol = np.broadcast_to(to_local @ (origins - self.centre[i]), dirs.shape)
        else:
            ol = (origins - self.centre[i]) @ to_local.T
        dl = dirs @ to_local.T
        h = self.half[i]
        kind = self.kind[i]
        t = np.full(len(dirs), np.inf)
        nl = np.zeros_like(dl)
        if kind == BOX:
            inv = 1.0 / np.where(np.abs(dl) < 1e-12, 1e-12, dl)
            t1, t2 = (-h - ol) * inv, (h - ol) * inv
            tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
            near, far = tmin.max(axis=1), tmax.min(axis=1)
            hit = (near <= far) & (near > EPS)
            t[hit] = near[hit]
            axis = tmin.argmax(axis=1)
            rows = np.nonzero(hit)[0]
            nl[rows, axis[rows]] = -np.sign(dl[rows, axis[rows]])
        elif kind == CYLINDER:
            r, hz = h[0], h[2]
            a = dl[:, 0] ** 2 + dl[:, 1] ** 2
            b = ol[:, 0] * dl[:, 0] + ol[:, 1] * dl[:, 1]
            cc = ol[:, 0] ** 2 + ol[:, 1] ** 2 - r * r
            disc = b * b - a * cc
            with np.errstate(invalid='ignore', divide='ignore'):
                ts = (-b - np.sqrt(np.maximum(disc, 0))) / np.where(a > 1e-12, a, 1.0)
            zs = ol[:, 2] + ts * dl[:, 2]
            side = (disc >= 0) & (a > 1e-12) & (ts > EPS) & (np.abs(zs) <= hz)
            t[side] = ts[side]
            p = ol[side] + ts[side, None] * dl[side]
            nl[side, 0], nl[side, 1] = p[:, 0] / r, p[:, 1] / r
            for zc, sign in ((hz, 1.0), (-hz, -1.0)):
                with np.errstate(invalid='ignore', divide='ignore'):
                    tc = (zc - ol[:, 2]) / np.where(np.abs(dl[:, 2]) > 1e-12, dl[:, 2], np.nan)
                pc = ol + np.nan_to_num(tc)[:, None] * dl
                cap = (tc > EPS) & (pc[:, 0] ** 2 + pc[:, 1] ** 2 <= r * r) & (tc < t)
                t[cap] = tc[cap]
                nl[cap] = (0.0, 0.0, sign)
        else:
            os_, ds = ol / h, dl / h
            a = np.sum(ds * ds, axis=1)
            b = np.sum(os_ * ds, axis=1)
            cc = np.sum(os_ * os_, axis=1) - 1.0
            disc = b * b - a * cc
            te = (-b - np.sqrt(np.maximum(disc, 0))) / a
            hit = (disc >= 0) & (te > EPS)
            t[hit] = te[hit]
            p = ol[hit] + te[hit, None] * dl[hit]
            nl[hit] = p / h ** 2
            nl[hit] /= np.linalg.norm(nl[hit], axis=1, keepdims=True)
        return t, nl @ to_local

    def cast(self, origins, dirs, max_dist=1000.0, chunk=8192):
        """Exact first hit of arbitrary rays against ground and shapes (bounding-sphere culling).

        Args:
            origins: [R, 3] or [3] global ray origins; dirs: [R, 3] unit directions.
        Returns:
            t [R] distance (inf = nothing within max_dist), sid [R] (-1 sky, -2 ground, else shape
            index), normal [R, 3].
        """
        origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), dirs.shape)
        t, sid, normal = ground_hit(origins, dirs, max_dist)
        for start in range(0, len(dirs), chunk):
            sl = slice(start, start + chunk)
            o, d = origins[sl], dirs[sl]
            oc = self.centre[None] - o[:, None]                   # [r, S, 3]
            tca = np.einsum('rsk,rk->rs', oc, d)
            d2 = np.einsum('rsk,rsk->rs', oc, oc) - tca ** 2
            cand = (d2 <= self.radius[None] ** 2) & (tca + self.radius[None] > 0)
            for i in np.nonzero(cand.any(axis=0))[0]:
                rows = np.nonzero(cand[:, i])[0]
                ti, ni = self.intersect(i, o[rows], d[rows])
                better = ti < t[sl][rows]
                idx = start + rows[better]
                t[idx], sid[idx], normal[idx] = ti[better], i, ni[better]
        return t, sid, normal

    def shape_colour(self, i, points, normals):
        """Base RGB [R, 3] of shape i at global hit points [R, 3] with its colour pattern."""
        base = np.broadcast_to(self.colour[i], points.shape).copy()
        pattern = self.pattern[i]
        if pattern == PLAIN or pattern == GLASS:
            return base
        q = self.to_local(i, points)
        h = self.half[i]
        if pattern == FACADE:
            # a grid of dark windows on the walls (not on the roof), 3.2 m floors, 2.5 m bays
            along = np.where(np.abs(normals[:, 2]) > 0.5, 0.0, q[:, 0] + q[:, 1])
            z = q[:, 2] + h[2]
            win = (np.abs((along % 2.5) - 1.25) < 0.55) & (np.abs((z % 3.2) - 1.9) < 0.65) & (z > 1.2) \
                & (np.abs(normals[:, 2]) < 0.5)
            base[win] = (0.18, 0.22, 0.28)
        elif pattern == STRIPES_X:
            base[(q[:, 0] % 0.8) < 0.4] = (0.95, 0.95, 0.95)
        elif pattern == STRIPES_Z:
            z = q[:, 2] + h[2]
            base[(z > 0.35 * 2 * h[2]) & (z < 0.6 * 2 * h[2])] = (0.95, 0.95, 0.95)
        elif pattern == FOLIAGE:
            base *= (0.75 + 0.5 * _noise3(points))[:, None]
        return np.clip(base, 0.0, 1.0)


def ground_hit(origins, dirs, max_dist):
    """Ray / ground plane z = 0 -> (t, sid, normal) initial buffers for a cast."""
    n = len(dirs)
    t = np.full(n, np.inf)
    with np.errstate(divide='ignore', invalid='ignore'):
        tg = -origins[:, 2] / dirs[:, 2]
    hit = (dirs[:, 2] < -1e-9) & (origins[:, 2] > 0) & (tg < max_dist)
    t[hit] = tg[hit]
    sid = np.where(hit, -2, -1)
    normal = np.zeros((n, 3))
    normal[:, 2] = 1.0
    return t, sid, normal


def _noise2(x, y):
    """Smooth world-anchored noise in [0, 1] (a few fixed sine waves; deterministic)."""
    v = (np.sin(0.71 * x + 1.3 * y + 0.4) + np.sin(-1.9 * x + 0.6 * y + 2.1) * 0.6
         + np.sin(3.7 * x + 4.1 * y + 1.0) * 0.35 + np.sin(0.13 * x - 0.17 * y) * 0.8)
    return (v / 2.75 + 1.0) * 0.5


def _noise3(p):
    v = (np.sin(3.1 * p[:, 0] + 2.3 * p[:, 2]) + np.sin(2.7 * p[:, 1] - 3.3 * p[:, 2] + 1.0)
         + np.sin(5.3 * p[:, 0] + 4.9 * p[:, 1] + 0.5) * 0.5)
    return (v / 2.5 + 1.0) * 0.5

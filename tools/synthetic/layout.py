"""Random but deterministic placement of the world's shapes along the road (one world per scene)."""
import numpy as np

from .world import (
    BARRIER,
    BICYCLE,
    BOX,
    BUS,
    CAR,
    CYLINDER,
    ELLIPSOID,
    FACADE,
    FOLIAGE,
    GLASS,
    MANMADE,
    PEDESTRIAN,
    PLAIN,
    STRIPES_X,
    STRIPES_Z,
    TRAFFIC_CONE,
    TRUCK,
    VEGETATION,
    Road,
    World,
)

CAR_COLOURS = [(0.75, 0.10, 0.10), (0.10, 0.20, 0.60), (0.85, 0.85, 0.85), (0.12, 0.12, 0.12),
               (0.55, 0.57, 0.60), (0.10, 0.45, 0.20), (0.85, 0.65, 0.10)]
CLOTHES = [(0.15, 0.15, 0.45), (0.50, 0.10, 0.10), (0.20, 0.20, 0.20), (0.80, 0.70, 0.30), (0.30, 0.50, 0.30)]
BUILDING_COLOURS = [(0.62, 0.45, 0.35), (0.70, 0.68, 0.62), (0.45, 0.42, 0.40), (0.78, 0.74, 0.60)]


class _Builder:
    """Collects shapes; rejects a new object whose footprint overlaps one already placed."""

    def __init__(self, road):
        self.road = road
        self.rows = []          # (kind, centre, half, yaw, label, colour, pattern)
        self.footprints = []    # (x, y, radius)

    def free(self, xy, radius):
        return all(np.hypot(xy[0] - x, xy[1] - y) >= radius + r for x, y, r in self.footprints)

    def place(self, s, d, parts, radius, yaw_jitter=0.0, rng=None):
        """Place an object made of `parts` at Frenet (s, d); parts are (kind, local centre (along,
        across, z), half, label, colour, pattern). Returns False when the spot is taken."""
        xy, psi = self.road.point(s, d)
        if not self.free(xy, radius):
            return False
        yaw = psi + (rng.uniform(-yaw_jitter, yaw_jitter) if yaw_jitter else 0.0)
        c, sn = np.cos(yaw), np.sin(yaw)
        for kind, (lx, ly, lz), half, label, colour, pattern in parts:
            centre = (xy[0] + c * lx - sn * ly, xy[1] + sn * lx + c * ly, lz)
            self.rows.append((kind, centre, half, yaw, label, colour, pattern))
        self.footprints.append((xy[0], xy[1], radius))
        return True


def _car(rng):
    length, width = rng.uniform(4.2, 4.9), rng.uniform(1.8, 2.0)
    colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
    return [(BOX, (0.0, 0.0, 0.6), (length / 2, width / 2, 0.45), CAR, colour, PLAIN),
            (BOX, (-0.25, 0.0, 1.3), (length * 0.27, width / 2 - 0.1, 0.25), CAR, (0.15, 0.18, 0.22), GLASS)], \
        np.hypot(length, width) / 2


def _truck(rng):
    colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
    return [(BOX, (2.9, 0.0, 1.4), (1.1, 1.2, 1.3), TRUCK, colour, PLAIN),
            (BOX, (-1.2, 0.0, 2.0), (3.0, 1.25, 1.6), TRUCK, (0.88, 0.88, 0.86), PLAIN)], 4.2


def _bus(rng):
    return [(BOX, (0.0, 0.0, 1.75), (5.5, 1.27, 1.45), BUS, (0.85, 0.55, 0.10), PLAIN),
            (BOX, (0.0, 0.0, 2.1), (5.3, 1.29, 0.45), BUS, (0.12, 0.14, 0.18), GLASS)], 5.7


def _pedestrian(rng):
    colour = CLOTHES[rng.integers(len(CLOTHES))]
    return [(CYLINDER, (0.0, 0.0, 0.73), (0.25, 0.25, 0.73), PEDESTRIAN, colour, PLAIN),
            (ELLIPSOID, (0.0, 0.0, 1.60), (0.13, 0.13, 0.15), PEDESTRIAN, (0.85, 0.68, 0.55), PLAIN)], 0.35


def generate_world(seed, scene_index, travel, origin):
    """Build the world of one scene.

    Args:
        seed (int): global seed; scene_index (int): which scene (worlds differ per scene).
        travel (float): metres the ego drives in the scene (objects cover [-70, travel + 70] m).
        origin (tuple): global (x, y) of the road origin (s = 0).
    Returns:
        World
    """
    rng = np.random.default_rng([seed, scene_index, 7])
    curvature = 0.0 if rng.random() < 0.4 else rng.choice([-1, 1]) / rng.uniform(150.0, 400.0)
    road = Road(origin, rng.uniform(-np.pi, np.pi), curvature)
    b = _Builder(road)
    s_lo, s_hi = -70.0, travel + 70.0
    # The ego lane (d in [-3.0, -0.1]) stays empty by construction: parked vehicles stand at
    # |d| >= 4, stopped traffic at d = 1.75 and cones at d = 0.15, while the ego drives at d = -1.75.
    for side in (-1, 1):
        s = s_lo + rng.uniform(0, 10)
        while s < s_hi:                                     # buildings
            length, depth, height = rng.uniform(8, 18), rng.uniform(6, 12), rng.uniform(4, 14)
            if rng.random() < 0.8:
                d = side * (13.0 + depth / 2 + rng.uniform(0, 6))
                colour = BUILDING_COLOURS[rng.integers(len(BUILDING_COLOURS))]
                b.place(s + length / 2, d, [(BOX, (0, 0, height / 2), (length / 2, depth / 2, height / 2),
                                             MANMADE, colour, FACADE)], np.hypot(length, depth) / 2)
            s += length + rng.uniform(2, 8)
        s = s_lo + rng.uniform(0, 6)
        while s < s_hi:                                     # street trees
            if rng.random() < 0.7:
                rxy, rz = rng.uniform(1.3, 2.2), rng.uniform(1.2, 1.9)
                green = (0.16 + rng.uniform(0, 0.1), 0.42 + rng.uniform(0, 0.15), 0.14)
                b.place(s, side * rng.uniform(9.0, 11.0),
                        [(CYLINDER, (0, 0, 1.2), (0.18, 0.18, 1.2), VEGETATION, (0.35, 0.25, 0.15), PLAIN),
                         (ELLIPSOID, (0, 0, 2.4 + rz * 0.8), (rxy, rxy, rz), VEGETATION, green, FOLIAGE)], rxy)
            s += rng.uniform(6, 12)
        for _ in range(int((s_hi - s_lo) / 25)):            # bushes
            r = rng.uniform(0.5, 1.0)
            b.place(rng.uniform(s_lo, s_hi), side * rng.uniform(8.6, 12.0),
                    [(ELLIPSOID, (0, 0, r * 0.6), (r, r * 0.9, r * 0.7), VEGETATION, (0.2, 0.4, 0.15), FOLIAGE)], r)
        s = s_lo + rng.uniform(0, 8)
        while s < s_hi:                                     # parked vehicles
            if rng.random() < 0.55:
                parts, radius = _truck(rng) if rng.random() < 0.15 else _car(rng)
                d = side * (4.2 if parts[0][3] == TRUCK else 4.0)
                b.place(s, d, parts, radius, yaw_jitter=0.05, rng=rng)
            s += rng.uniform(6, 14)
        for _ in range(int((s_hi - s_lo) / 7)):             # pedestrians on the sidewalk
            parts, radius = _pedestrian(rng)
            b.place(rng.uniform(s_lo, s_hi), side * rng.uniform(5.6, 7.6), parts, radius)
        for _ in range(int((s_hi - s_lo) / 60) + 1):        # bicycles leaning by the kerb
            b.place(rng.uniform(s_lo, s_hi), side * rng.uniform(6.8, 7.6),
                    [(BOX, (0, 0, 0.52), (0.85, 0.22, 0.52), BICYCLE, (0.1, 0.5, 0.7), PLAIN)], 0.9)
        s = s_lo + rng.uniform(0, 30)
        while s < s_hi:                                     # barrier rows at the kerb
            n = rng.integers(3, 7)
            for k in range(n):
                b.place(s + 2.1 * k, side * 5.4, [(BOX, (0, 0, 0.45), (1.0, 0.18, 0.45), BARRIER,
                                                    (0.8, 0.1, 0.1), STRIPES_X)], 1.02)
            s += 2.1 * n + rng.uniform(25, 60)
    s = s_lo + rng.uniform(0, 20)
    while s < s_hi:                                         # stopped traffic in the other lane
        if rng.random() < 0.35:
            r = rng.random()
            parts, radius = _bus(rng) if r < 0.1 else _truck(rng) if r < 0.25 else _car(rng)
            b.place(s, 1.75, parts, radius, yaw_jitter=0.03, rng=rng)
        s += rng.uniform(10, 25)
    s = s_lo + rng.uniform(0, 15)
    while s < s_hi:                                         # traffic cones on the centre line
        for k in range(rng.integers(3, 6)):
            b.place(s + 1.5 * k, 0.15, [(CYLINDER, (0, 0, 0.36), (0.17, 0.17, 0.36), TRAFFIC_CONE,
                                         (0.95, 0.45, 0.05), STRIPES_Z)], 0.2)
        s += rng.uniform(20, 45)
    patches = []                                            # paved yards / car parks
    for _ in range(int((s_hi - s_lo) / 40)):
        s0, side = rng.uniform(s_lo, s_hi), rng.choice([-1, 1])
        d0, d1 = sorted((side * 8.0, side * rng.uniform(14, 22)))
        patches.append((s0, s0 + rng.uniform(8, 20), d0, d1, 0))
    kind, centre, half, yaw, label, colour, pattern = zip(*b.rows)
    return World(road, patches, kind, centre, half, yaw, label, colour, pattern)

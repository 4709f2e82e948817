"""The synthetic nuScenes world: a small, fully known 3D scene written in the real nuScenes +
Occ3D on-disk layout, for the demo and the tests. It is a test world, not a stand-in for nuScenes
results (see docs/data.md)."""

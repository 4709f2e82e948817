"""models/knn.py against float64 brute force, exact ties, tiling and input errors."""
import pytest
import torch

from models.knn import knn1, knn1_bidirectional

# float32 machine epsilon 2^-23 (one rounding moves a value by at most half of it, relative)
EPS32 = float(torch.finfo(torch.float32).eps)


def brute_force(query, ref):
    """float64 squared distances [M, K] and the float64 argmin (first index on ties)."""
    d = ((query.double()[:, None, :] - ref.double()[None, :, :]) ** 2).sum(-1)
    return d, torch.tensor([min(range(ref.shape[0]), key=lambda j: (row[j].item(), j))
                            for row in d], dtype=torch.long)


@pytest.mark.parametrize('max_pairs', [7, 64, 1 << 24])
def test_matches_float64_brute_force_on_metre_scale_points(max_pairs):
    g = torch.Generator().manual_seed(0)
    # Points tens of metres from the origin, centimetres apart: where |a|^2-2ab+|b|^2 fails.
    ref = torch.rand(53, 3, generator=g) * 0.3 + torch.tensor([35.0, -38.0, 4.0])
    query = torch.rand(41, 3, generator=g) * 0.3 + torch.tensor([35.0, -38.0, 4.0])
    idx = knn1(query, ref, max_pairs=max_pairs)
    d64, ref_idx = brute_force(query, ref)
    assert idx.dtype == torch.long and idx.shape == (41,)
    chosen = d64[torch.arange(41), idx]
    best = d64.min(dim=1).values
    # float32 distances may reorder only neighbours whose float64 distances are within rounding: the
    # coordinates (same sign, within 2x) subtract exactly (Sterbenz), the squares and the two sums of
    # nonnegative terms round 3 times, so a float32 distance is within 3 * 2^-24 (1.5 eps) of its
    # float64 value, relative, and the chosen one is within 2 * 1.5 = 3 eps of the best.
    assert torch.all(chosen - best <= 3 * EPS32 * best)
    # Hence the index is the float64 argmin wherever the runner-up is farther than that: here every query
    # (the closest runner-up of this data is thousands of eps away).
    second = d64.sort(dim=1).values[:, 1]
    clear = second - best > 3 * EPS32 * best
    assert clear.all() and torch.equal(idx, ref_idx)


def test_exact_ties_go_to_lowest_index_across_tiles():
    # Dyadic coordinates: every float32 distance is exact, so ties are true ties.
    ref = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    query = torch.tensor([[0.0, 0, 0], [0.5, 0.5, 0], [2.0, 0, 0], [0.25, 0, 0.25]])
    # query 0: equidistant to all 5 -> 0; query 1: refs 0, 1 (and 4) tie -> 0;
    # query 2: refs 0 and 4 are duplicates -> 0; query 3: refs 0, 3 and 4 tie -> 0.
    for max_pairs in (1, 2, 3, 5, 100):
        assert knn1(query, ref, max_pairs=max_pairs).tolist() == [0, 0, 0, 0]
    # Same distances with the duplicate first: the lower index still wins.
    ref2 = torch.tensor([[5.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    assert knn1(torch.tensor([[2.0, 0, 0]]), ref2, max_pairs=1).tolist() == [1]


def test_bidirectional_equals_two_one_way_calls():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-20, 20, (37, 3), generator=g).float() * 0.4
    b = torch.randint(-20, 20, (29, 3), generator=g).float() * 0.4
    for max_pairs in (5, 100, 1 << 20):
        ab, ba = knn1_bidirectional(a, b, max_pairs=max_pairs)
        assert torch.equal(ab, knn1(a, b)) and torch.equal(ba, knn1(b, a))
        _, ab_ref = brute_force(a, b)
        _, ba_ref = brute_force(b, a)
        # Multiples of 0.4 in float32: distances agree with float64 up to rounding; compare the
        # distances of the chosen neighbours (ties on a lattice are common). A float32 distance rounds
        # 5 times (difference, square, two sums: (1 + 2^-24)^5), so the float32 argmin's float64
        # distance is within 2 * 5 * 2^-24 = 5 eps of the best one, relative.
        d = ((a.double()[:, None] - b.double()[None]) ** 2).sum(-1)
        assert torch.allclose(d[torch.arange(37), ab], d[torch.arange(37), ab_ref], rtol=5 * EPS32, atol=0)
        assert torch.allclose(d[ba, torch.arange(29)], d[ba_ref, torch.arange(29)], rtol=5 * EPS32, atol=0)


def test_single_points_and_empty_query_keep_shapes():
    assert knn1(torch.zeros(1, 3), torch.ones(1, 3)).shape == (1,)
    assert knn1(torch.zeros(0, 3), torch.ones(4, 3)).shape == (0,)
    ab, ba = knn1_bidirectional(torch.zeros(1, 3), torch.ones(1, 3))
    assert ab.tolist() == [0] and ba.tolist() == [0]


def test_float64_inputs_are_matched_in_float32():
    # 1e-9 apart in float64 but equal in float32: both refs tie, lowest index wins.
    ref = torch.tensor([[10.0, 0, 0], [10.0 - 1e-9, 0, 0]], dtype=torch.float64)
    assert knn1(torch.zeros(1, 3, dtype=torch.float64), ref).tolist() == [0]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r'\[N, 3\]'):
        knn1(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match='empty'):
        knn1(torch.zeros(4, 3), torch.zeros(0, 3))
    with pytest.raises(TypeError, match='floating'):
        knn1(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3))
    with pytest.raises(ValueError, match='at least one point'):
        knn1_bidirectional(torch.zeros(0, 3), torch.zeros(2, 3))


def test_backend_choice_is_validated():
    with pytest.raises(ValueError, match='backend must be one of'):
        knn1(torch.zeros(2, 3), torch.zeros(2, 3), backend='faiss')
    with pytest.raises(ValueError, match='needs CUDA tensors'):
        knn1(torch.zeros(2, 3), torch.zeros(2, 3), backend='csrc')


def _backend_available(backend):
    from models.knn import _load
    return backend == 'torch' or _load(backend) is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('backend', ['torch', 'csrc', 'mmcv', 'auto'])
def test_gpu_matches_cpu(backend):
    if not _backend_available(backend):
        pytest.skip(f'{backend} kernel not built')
    g = torch.Generator().manual_seed(2)
    a = torch.rand(3000, 3, generator=g) * 80 - 40
    b = torch.rand(2000, 3, generator=g) * 80 - 40
    b[1000:1100] = b[:100]                      # exact duplicates: lowest index must win
    ab, ba = knn1_bidirectional(a.cuda(), b.cuda(), backend=backend)
    ab_cpu, ba_cpu = knn1_bidirectional(a, b)
    if backend in ('torch', 'csrc'):
        # Same fp32 rounding (no FMA) on both sides: identical indices.
        assert torch.equal(ab.cpu(), ab_cpu) and torch.equal(ba.cpu(), ba_cpu)
    # Other kernels (mmcv's, FMA-contracted) round a float32 distance at most 5 times as well: each argmin's
    # float64 distance lies in [best, best * (1 + 5 eps)], so the two differ by at most 5 eps, relative.
    d = ((a.double()[:, None] - b.double()[None]) ** 2).sum(-1)
    assert torch.allclose(d[torch.arange(3000), ab.cpu()], d[torch.arange(3000), ab_cpu], rtol=5 * EPS32, atol=0)
    assert torch.allclose(d[ba.cpu(), torch.arange(2000)], d[ba_cpu, torch.arange(2000)], rtol=5 * EPS32, atol=0)
    assert not ((ab.cpu() >= 1000) & (ab.cpu() < 1100)).any()


@pytest.mark.parametrize('seed', [0, 1])
def test_kdtree_path_equals_tiled_brute_force(seed):
    """The CPU KD-tree path returns exactly the tiled float32 result, lattice ties included."""
    g = torch.Generator().manual_seed(seed)
    # voxel centres of a small lattice (many exact ties) + continuous points far from the origin
    lattice = torch.stack(torch.meshgrid(*[torch.arange(6.0) * 0.4 - 30.0] * 3, indexing='ij'), -1).reshape(-1, 3)
    ref = torch.cat([lattice, torch.rand(300, 3, generator=g) * 4 - 32.0])
    query = torch.cat([lattice[::7] + 0.2,  # cell corners: 8 equidistant centres
                       torch.rand(500, 3, generator=g) * 4 - 32.0, ref[:20]])
    expected_q, expected_r = knn1_bidirectional(query, ref, backend='torch')
    got_q, got_r = knn1_bidirectional(query, ref, backend='kdtree')
    assert torch.equal(got_q, expected_q)
    assert torch.equal(got_r, expected_r)
    assert torch.equal(knn1(query, ref, backend='kdtree'), knn1(query, ref, backend='torch'))

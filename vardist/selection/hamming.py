"""Gaussian kernel sums over binary vectors (Infinity's bit labels), through Hamming distances.

When every dim of a position takes at most two values lo_c and lo_c + g (one gap g for all dims
that vary: 0/1 bits, +-1 codes, +-1/sqrt(d) BSQ codes), ||a - b||^2 = g^2 H(a, b) with H the
Hamming distance, so the authors' kernel is exp(-g^2 H / (2 h^2)) = r^H with
r = exp(-g^2 / (2 h^2)): a lookup in a table of v + 1 values (v: the dims that vary), no exp per
pair. Three plans for the sums over the U distinct vectors, weighted by their counts; the
cheapest is priced and picked per position:

- cube:  scatter the counts into a dense table over all 2^v codes and apply the kernel, which is a
         tensor product of one 2 x 2 matrix [[1, r], [r, 1]] per varying dim, a few bits at a time
         as GEMMs. Exact, no truncation; cost ~ v 2^v, so for v <= CUBE_MAX_BITS. Infinity's
         top_p fixes the confident bits, so a realistic position varies in ~18 of its 32 bits.
- join:  for radius 1 or 2, one sort of the codes together with their v one-bit neighbours
         ("midpoints"): a code equal to a midpoint of x is at distance 1 from x, and two codes
         sharing a midpoint are at distance 2 (such a pair shares exactly two). Cost ~ U (v + 1).
- flat:  FAISS's binary flat index (popcount over all U^2 pairs, C++) returns the pairs within R.

Join and flat leave out the pairs farther than R, where R is the least radius whose dropped terms
are certified to add up to at most DROP_REL of a score (every score is >= 1, its self term; a
candidate has at most n partners, each below r^(R + 1)).
"""

from __future__ import annotations

from math import log

import numpy as np

from vardist.selection.grouping import sort_order, sorted_runs

DROP_REL = 1e-9       # certified share of a score that truncated plans may leave out (100x
                      # below the float32 rounding of the authors' own code)
CUBE_MAX_BITS = 24    # cube plan: two dense float64 tables of 2^v entries (256 MiB at 24 bits)
CUBE_CHUNK_BITS = 6   # bits contracted per GEMM in the cube plan (a 64 x 64 kernel matrix)
BLOCK = 1 << 22       # elements of one intermediate block (distances, lookups, pairs)

# rough ns per unit of work on one core, to price the plans against each other
_NS_CUBE = 3.4        # per table entry per bit
_NS_JOIN = 60.0       # per sorted entry (code or midpoint), sort and segment sums
_NS_FLAT = 1.2        # per pair and 64-bit word (popcount, C++)


def binary_bits(u: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(bits [U, v] bool of the dims that vary, gap g) when every dim of u takes at most two
    values lo_c, lo_c + g with one g for all varying dims; None otherwise."""
    lo, hi = u.min(axis=0), u.max(axis=0)
    varying = hi > lo
    if not varying.any():
        return np.zeros((len(u), 0), bool), 0.0
    gaps = (hi - lo)[varying]
    if gaps.min() != gaps.max():
        return None
    uv, lo, hi = u[:, varying], lo[varying], hi[varying]
    bits = uv == hi
    if not (bits | (uv == lo)).all():  # a third value somewhere
        return None
    return bits, float(gaps[0])


def pool_codes(x: np.ndarray) -> np.ndarray | None:
    """Codes uint64 [P, n] (bit c = dim c; one contiguous row per position) when every entry of
    x [n, P, d <= 64] is 0 or 1, as Infinity's bit labels are; None otherwise. One blocked pass."""
    n, P, d = x.shape
    if d > 64:
        return None
    out = np.empty((P, n), np.uint64)
    step = max(1, BLOCK // (P * d))
    for s in range(0, n, step):
        block = x[s:s + step]
        bits = block != 0
        if not np.array_equal(block, bits):  # some entry is neither 0 nor 1
            return None
        out[:, s:s + step] = _pack_int(bits.reshape(-1, d)).reshape(-1, P).T
    return out


def unique_codes(codes: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct rows float64 [U, d], inverse [n], counts float64 [U]) of one position's codes:
    the grouping kde.py's _unique_rows gives, from integers."""
    order, sorted_codes = sort_order(codes, d)
    starts, inv, counts = sorted_runs(order, sorted_codes)
    distinct = np.ascontiguousarray(sorted_codes[starts], dtype="<u8").view(np.uint8).reshape(-1, 8)
    rows = np.unpackbits(distinct, axis=1, count=d, bitorder="little")
    return rows.astype(np.float64), inv, counts.astype(np.float64)


def hamming_kernel_sums(bits: np.ndarray, gap: float, counts: np.ndarray, h: float) -> np.ndarray:
    """sum_m counts_m exp(-gap^2 H(bits_j, bits_m) / (2 h^2)) for every distinct row j, float64 [U].

    Exact for the cube plan; the join and flat plans leave out terms certified to add up to at most
    DROP_REL of each score."""
    n_unique, v = bits.shape
    table = np.exp(-(gap * gap / (2.0 * h * h)) * np.arange(v + 1))  # kernel at Hamming 0..v
    radius = _radius(table, counts.sum())
    if radius == 0 or n_unique == 1:
        return counts * table[0]
    plan = min(_plans(n_unique, v, radius, table[1]), key=lambda p: p[0])[1]
    if plan == "cube":
        return _cube_sums(_pack_int(bits), counts, table)
    if plan == "join":
        return _join_sums(_pack_int(bits), counts, table, radius)
    return _flat_sums(_pack_words(bits), counts, table, radius)


def _radius(table: np.ndarray, n: float) -> int:
    """Least R with n * table[R + 1] <= DROP_REL (all of them when no R short of v does)."""
    beyond = np.flatnonzero(n * table[1:] <= DROP_REL)
    return int(beyond[0]) if len(beyond) else len(table) - 1


def _plans(n_unique: int, v: int, radius: int, r: float):
    """(estimated ns, name) of every plan that applies."""
    yield _NS_FLAT * n_unique * n_unique * -(-v // 64), "flat"
    # cube: r^v must stay a normal float64 (subnormal arithmetic is ~100x slower)
    if v <= CUBE_MAX_BITS and v * log(r) > -650:
        yield _NS_CUBE * v * 2.0**v, "cube"
    if radius <= 2 and v <= 64:
        yield _NS_JOIN * n_unique * (v + 1), "join"


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """Rows as bytes [U, 8 * words], zero-padded to whole 64-bit words (FAISS's fast popcount
    paths take 8-byte multiples; a 3-byte code is ~5x slower); bit c of the row = dim c."""
    packed = np.packbits(bits, axis=1, bitorder="little")
    padded = np.zeros((len(bits), 8 * -(-packed.shape[1] // 8)), np.uint8)
    padded[:, :packed.shape[1]] = packed
    return padded


def _pack_int(bits: np.ndarray) -> np.ndarray:
    """Rows of <= 64 bits as uint64 integers (bit c of the integer = dim c)."""
    return _pack_words(bits).view("<u8")[:, 0].astype(np.uint64)


def _cube_sums(codes: np.ndarray, counts: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Counts on the full 2^v cube, convolved with the kernel a chunk of bits at a time: each GEMM
    contracts the lowest bits of the table index and writes them out as the highest (a transposed
    store into a second table), so after all v bits the index order is back where it started."""
    v = len(table) - 1
    cube, spare = np.zeros(1 << v), np.empty(1 << v)
    idx = codes.astype(np.intp)
    cube[idx] = counts
    done = 0
    while done < v:
        b = min(CUBE_CHUNK_BITS, v - done)
        k = np.arange(1 << b)
        kernel = table[np.bitwise_count(k[:, None] ^ k[None, :])]  # r^Hamming within the chunk
        src, dst = cube.reshape(-1, 1 << b), spare.reshape(1 << b, -1)
        step = max(1, BLOCK // (1 << b))
        for s in range(0, len(src), step):
            dst[:, s:s + step] = (src[s:s + step] @ kernel).T
        cube, spare = spare, cube
        done += b
    return cube[idx]


def _join_sums(codes: np.ndarray, counts: np.ndarray, table: np.ndarray, radius: int) -> np.ndarray:
    """Self term plus the counts at Hamming distance 1 and (radius 2) 2, from one sort of the
    codes and their one-bit neighbours (see the module docstring)."""
    U, v = len(codes), len(table) - 1
    mids = codes[:, None] ^ (np.uint64(1) << np.arange(v, dtype=np.uint64))  # [U, v]
    keys = np.concatenate([mids.ravel(), codes])
    starts, group, _ = sorted_runs(*sort_order(keys, v))
    mid_group = group[:U * v].reshape(U, v)
    present = np.bincount(group[U * v:], weights=counts, minlength=len(starts))  # code == key
    out = counts * table[0] + table[1] * present[mid_group].sum(axis=1)
    if radius >= 2:
        members = np.bincount(mid_group.ravel(), weights=np.repeat(counts, v), minlength=len(present))
        # every partner at distance 2 shares two midpoints with x; x itself is in all v of them
        out += table[2] * 0.5 * (members[mid_group].sum(axis=1) - v * counts)
    return out


def _flat_sums(packed: np.ndarray, counts: np.ndarray, table: np.ndarray, radius: int) -> np.ndarray:
    """Pairs within the radius from FAISS's binary flat index, queried in blocks so the returned
    pairs stay bounded (at most BLOCK per block)."""
    from vardist.selection.faiss_flavour import load_faiss

    faiss = load_faiss()  # lazy, as in kde.py

    index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
    index.add(packed)
    out = np.empty(len(packed))
    step = max(1, BLOCK // len(packed))
    for s in range(0, len(packed), step):
        lims, dist, nbr = index.range_search(packed[s:s + step], radius + 1)  # Hamming < radius + 1
        query = np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.intp)))
        terms = table[dist.astype(np.intp)] * counts[nbr]
        out[s:s + step] = np.bincount(query, weights=terms, minlength=len(lims) - 1)
    return out

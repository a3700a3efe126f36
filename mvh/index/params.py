"""FAISS index kinds and their parameters: the automatic choice and the validation of given values.

- `flat`: exact search (IndexFlatIP). `auto` picks it up to `FLAT_MAX_TILES` tiles.
- `ivfpq`: an inverted file (`nlist` k-means cells, `nprobe` visited per query; `coarse="hnsw"`: the
  cells of a vector are found through an HNSW graph over the centroids, `COARSE_HNSW_M` links, instead of
  comparing it with every centroid) over product-quantised
  codes (`m` sub-quantisers of `nbits` bits; 4 bits uses FAISS's SIMD "fast-scan" layout), whose top
  `k_factor * k` candidates are re-ranked by exact cosine on their stored vectors read from disk by row
  id (`refine="stored"`, what `auto` picks: no vector copy in RAM), or inside FAISS with 8-bit
  scalar-quantised (`"sq8"`) or float32 (`"flat"`) copies in RAM. `auto` picks it above `FLAT_MAX_TILES`.
- `hnsw`: a graph index (HNSW, `hnsw_m` links per node, `ef_search` candidates per query) on exact vectors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mvh.errors import StoreError, UsageError

FLAT_MAX_TILES = 200_000
# Links per centroid of the HNSW graph that finds a vector's IVF cells (FAISS `IVF{nlist}_HNSW32`), and its
# efSearch when a vector is added (one cell wanted; a search asks for nprobe cells, so FAISS uses
# max(efSearch, nprobe)). benchmarks/scale.py: adding 200,000 vectors to IVF4096 took 53 s of CPU with
# exact assignment, 9.6 s through the graph.
COARSE_HNSW_M = 32
COARSE_EF_SEARCH = 32
# Re-ranked candidates per hit of an automatic IVF-PQ index. benchmarks/scale.py, recall@10 vs exact:
# 4 gave 0.976 at 1M tiles but 0.932 at 10M (the misses are re-rank misses); 8 gives 0.997 / 0.988.
AUTO_K_FACTOR = 8
KINDS = ("auto", "flat", "ivfpq", "hnsw")
NBITS = (4, 5, 6, 7, 8)
# The CLI flag of each tunable parameter, and the index kind it belongs to.
FLAGS = {
    "nlist": ("--nlist", "ivfpq"),
    "m": ("--m", "ivfpq"),
    "nbits": ("--nbits", "ivfpq"),
    "nprobe": ("--nprobe", "ivfpq"),
    "hnsw_m": ("--hnsw-m", "hnsw"),
    "ef_search": ("--ef", "hnsw"),
}


@dataclass(frozen=True)
class IndexParams:
    """The kind of a FAISS index and the parameters it is built and searched with."""

    kind: str
    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None
    nprobe: int | None = None
    refine: str | None = None
    k_factor: int | None = None
    coarse: str | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None

    def factory_string(self) -> str:
        """The `faiss.index_factory` description of the index."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.kind == "ivfpq":
            pq = f"PQ{self.m}x4fs" if self.nbits == 4 else f"PQ{self.m}x{self.nbits}"
            refine = {"sq8": ",Refine(SQ8)", "flat": ",RFlat", "stored": "", None: ""}[self.refine]
            coarse = f"_HNSW{COARSE_HNSW_M}" if self.coarse == "hnsw" else ""
            return f"IVF{self.nlist}{coarse},{pq}{refine}"
        raise UsageError(f"unknown index kind {self.kind!r}: use one of {', '.join(KINDS)}")

    def describe(self) -> str:
        """One line: the factory string and the search-time parameters."""
        if self.kind == "exact":
            return "exact (a streamed pass over the store, no index)"
        if self.kind == "ivfpq":
            rerank = " re-rank=stored" if self.refine == "stored" else ""
            return f"{self.factory_string()} nprobe={self.nprobe} k_factor={self.k_factor}{rerank}"
        if self.kind == "hnsw":
            return f"{self.factory_string()} efConstruction={self.ef_construction} efSearch={self.ef_search}"
        return self.factory_string()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexParams:
        """Rebuild from `to_dict()` output."""
        return cls(**data)  # an index saved before `coarse` existed has none: exact cells (None)


def check_params(kind: str, **given: int | None) -> None:
    """UsageError naming the flag when `kind` is unknown or a given parameter is invalid for it.

    `given` holds nlist, m, nbits, nprobe, hnsw_m, ef_search (None = choose automatically).
    """
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r} is unknown: use one of {', '.join(KINDS)}")
    for name, value in given.items():
        if value is None:
            continue
        flag, owner = FLAGS[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{flag} {value!r} is not an integer: give a positive whole number")
        if name == "nbits" and value not in NBITS:
            raise UsageError(f"{flag} {value} is not supported: use 4 (fast-scan) to 8")
        if name == "hnsw_m" and value < 2:
            raise UsageError(f"{flag} {value}: an HNSW graph needs at least 2 links per node; use 2 or more")
        if value < 1:
            raise UsageError(f"{flag} {value} must be a positive integer; leave it out for the automatic one")
        if kind not in ("auto", owner):
            raise UsageError(f"{flag} is for --kind {owner} only, not --kind {kind}: drop it or set --kind")


def _pow2_floor(value: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(value, 1.0)))))


def _pq_m(dim: int) -> int:
    """The number of PQ sub-quantisers: about one per 8 dimensions, dividing `dim` exactly."""
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def auto_params(
    n: int,
    dim: int,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    m: int | None = None,
    nbits: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int | None = None,
    ef_search: int | None = None,
    refine: str = "stored",
) -> IndexParams:
    """Index parameters for `n` vectors of `dim`: the automatic choice, with any given value kept.

    `auto` is exact Flat up to FLAT_MAX_TILES vectors, IVF-PQ above. IVF-PQ: nlist = the power of two
    nearest to sqrt(n) (at most n / 39, FAISS's minimum of training points per cell), cells found
    through an HNSW graph of the centroids (`coarse="hnsw"`, COARSE_HNSW_M links), nprobe =
    max(8, nlist / 16), m = dim / 8 sub-quantisers of 4 bits (fast-scan), top 8k re-ranked by exact
    cosine on the stored vectors (`AUTO_K_FACTOR`; `refine`: "stored", or "sq8"/"flat" inside FAISS).
    HNSW: 32 links, efConstruction 64, efSearch 64 (256 above FLAT_MAX_TILES vectors; at 1M
    clustered vectors HNSW then reaches recall@10 0.93 only, so `auto` never picks it).
    Given values that do not fit the resolved kind are a UsageError, never ignored.
    """
    given = {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe, "hnsw_m": hnsw_m,
             "ef_search": ef_search}
    check_params(kind, **given)
    if n <= 0:
        raise StoreError("the store has no tiles: extract slides with `mvh extract` before building an index")
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX_TILES else "ivfpq"
        check_params(kind, **given)
    if kind == "flat":
        return IndexParams(kind="flat")
    if kind == "hnsw":
        return IndexParams(
            kind="hnsw",
            hnsw_m=hnsw_m or 32,
            ef_construction=64,
            ef_search=ef_search or (64 if n <= FLAT_MAX_TILES else 256),
        )
    max_cells = max(1, n // 39)
    if nlist is None:
        nlist = min(_pow2_floor(math.sqrt(n) * math.sqrt(2)), _pow2_floor(max_cells))
    if nlist > n:
        raise UsageError(f"--nlist {nlist} exceeds the {n} tiles of the store: choose at most {max_cells}")
    m = m or _pq_m(dim)
    if dim % m:
        raise UsageError(f"--m {m} must divide the embedding dimension {dim}")
    nbits = nbits or 4
    nprobe = min(nlist, nprobe or max(8, nlist // 16))
    return IndexParams(
        kind="ivfpq", nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, refine=refine, k_factor=AUTO_K_FACTOR,
        coarse="hnsw",
    )

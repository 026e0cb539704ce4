"""Memory-bandwidth kernels over K flat float32 vectors (the only O(K·d) work a strategy does).

* :func:`weighted_sum` — ``Σ_k a_k v_k``. When the vectors are the rows of one C-contiguous
  (K, d) matrix (what :func:`allocate_update_matrix` gives the aggregator: one copy of all
  updates), it is a single BLAS ``a @ V`` — the same call as a plain numpy weighted sum. Otherwise
  it accumulates in place (one read of each vector, no temporaries).
* :func:`squared_norms` — ``‖v_k‖²`` with BLAS dot products (float64 accumulation is not needed
  at float32 precision for the norms q-FFL uses; BLAS sdot accumulates in float32).
* :func:`project_simplex` — Euclidean projection onto the probability simplex.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fairfleet.errors import ConfigError


def allocate_update_matrix(k: int, d: int) -> np.ndarray:
    """One (k, d) float32 buffer; decode update k into row k to get the zero-copy fast path."""
    if k < 1 or d < 1:
        raise ConfigError(f"Update matrix shape must be positive. Found ({k}, {d}).")
    return np.empty((k, d), dtype=np.float32)


def _common_matrix_rows(vectors: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(base, row indices) if every vector is a full row of one C-contiguous 2-D array."""
    base = vectors[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 2 or not base.flags.c_contiguous:
        return None
    if base.dtype != np.float32 or base.shape[1] != vectors[0].shape[0]:
        return None
    start = base.__array_interface__["data"][0]
    row_bytes = base.strides[0]
    rows = np.empty(len(vectors), dtype=np.int64)
    for i, v in enumerate(vectors):
        if v.base is not base or not v.flags.c_contiguous:
            return None
        offset = v.__array_interface__["data"][0] - start
        if offset % row_bytes:
            return None
        rows[i] = offset // row_bytes
    if len(np.unique(rows)) != len(rows):
        return None
    return base, rows


def weighted_sum(vectors: Sequence[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
    """``Σ_k coefficients[k] · vectors[k]`` as a new float32 vector."""
    coeffs = np.asarray(coefficients, dtype=np.float64)
    if len(vectors) == 0:
        raise ConfigError("weighted_sum needs at least one vector. Found 0.")
    if coeffs.shape != (len(vectors),):
        raise ConfigError(
            f"weighted_sum needs one coefficient per vector ({len(vectors)}). Found {coeffs.shape}."
        )
    common = _common_matrix_rows(vectors)
    if common is not None:
        base, rows = common
        # Scatter into a full-length coefficient vector so BLAS reads the matrix once, in order;
        # rows not in this aggregation get 0 (only worth it when most rows take part).
        if len(rows) * 2 >= base.shape[0]:
            full = np.zeros(base.shape[0], dtype=np.float32)
            full[rows] = coeffs
            return np.asarray(full @ base, dtype=np.float32)
    out = np.zeros(vectors[0].shape[0], dtype=np.float32)
    scratch = np.empty_like(out)
    for a, v in zip(coeffs, vectors, strict=True):
        if a == 0.0:
            continue
        np.multiply(v, np.float32(a), out=scratch)
        out += scratch
    return out


def squared_norms(
    vectors: Sequence[np.ndarray], known: Sequence[float | None] | None = None
) -> np.ndarray:
    """``‖v_k‖²`` for each vector, as float64; entries of ``known`` that are not None are used."""
    given = known if known is not None else [None] * len(vectors)
    return np.array(
        [float(np.dot(v, v)) if k is None else k for v, k in zip(vectors, given, strict=True)],
        dtype=np.float64,
    )


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto {x : x ≥ 0, Σx = 1} (sort-based, O(n log n)).

    Held, Wolfe & Crowder 1974 / Duchi et al. 2008, Fig. 1: sort u = sort(v) descending, find
    ρ = max{j : u_j − (Σ_{i≤j} u_i − 1)/j > 0}, θ = (Σ_{i≤ρ} u_i − 1)/ρ, x = max(v − θ, 0).
    Written here because it is five lines and numpy/scipy have no simplex projection.
    """
    x = np.asarray(v, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ConfigError(f"project_simplex needs a non-empty 1-D vector. Found shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"project_simplex needs finite values. Found {x.tolist()}.")
    u = np.sort(x)[::-1]
    cumulative = np.cumsum(u) - 1.0
    j = np.arange(1, x.size + 1)
    rho = int(np.nonzero(u - cumulative / j > 0)[0][-1]) + 1
    theta = cumulative[rho - 1] / rho
    return np.maximum(x - theta, 0.0)

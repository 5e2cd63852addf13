r"""The interface every strip-kernel implementation provides (eager PyTorch, native CPU, Triton).

The streaming engine (:mod:`contextual_loss.engine.streaming`) visits the prediction's rows in
full-width strips. Per strip, a GEMM (or ``cdist`` for L1) writes the affinities
``u`` (R x M, contiguous, float32 or float64), with :math:`d_{ik} = \beta_i - u_{ik}` (see
:mod:`contextual_loss.engine.strips`). All the elementwise work on a strip after that GEMM is
done by one :class:`StripKernels` implementation, in one call per pass:

Forward (:meth:`StripKernels.forward`), for every row i of the strip:

.. math::

    \hat u_i = \max_k u_{ik}, \quad k(i) = \text{first } k \text{ attaining it}, \quad
    m_i = \beta_i - \hat u_i \ (\text{clamped at } 0 \text{ when } \texttt{clamp}), \\
    s_i = 1 / ((m_i + \epsilon) h), \quad t_{ik} = (u_{ik} - \hat u_i) s_i \le 0, \quad
    L_i = \operatorname{log1p} \sum_{k \ne k(i)} e^{t_{ik}}, \quad a_{ik} = t_{ik} - L_i = \log CX_{ik},

with ``exp`` of arguments below :func:`~contextual_loss.engine.strips.underflow_limit` counted
as exactly 0. The row statistics go to ``rows``; then either ``u`` is overwritten with ``a``
(``write_a=True``, for CoBi's released mixture, which the engine finishes itself), or the
running column maximum ``columns`` is updated: for every column j, the largest
:math:`a_{ij}` of the strip replaces ``columns.best[j]`` if it is greater, or equal with a smaller
global row, and ``columns.index[j]`` becomes that row (``row0`` plus the *first* strip row
attaining it). Ties go to the first row overall, like ``torch.max``, whatever the order in
which rows and strips are processed.

Two options let the engine refine some rows between the GEMM and the statistics (the near field
of :mod:`contextual_loss.engine.nearfield`) without a separate pass over the strip:

* ``defer`` (a :class:`Deferral`): a row whose maximum exceeds ``defer.floor[i]`` is *deferred*:
  only its ``umax`` and its maxima over blocks of :data:`~contextual_loss.engine.strips.NEAR_BLOCK`
  columns (``defer.block_max``) are written, and ``defer.deferred[i]`` is set; nothing else of the
  row is computed, and it does not touch ``columns``. The call returns the number of deferred rows.
* ``only`` ((R,) bool): only the rows marked are processed; the others' statistics, entries and
  column contributions are left untouched. The engine calls ``forward`` again with
  ``only=defer.deferred`` once it has refined those rows.

Backward (:meth:`StripKernels.backward`), on the recomputed affinities of rows that are some
target's best match, with the statistics the forward pass stored for those rows:

.. math::

    a_{ik} = (u_{ik} - \hat u_i) s_i - L_i \ (k \ne k(i)), \quad a_{i k(i)} = -L_i, \quad
    p_{ik} = e^{a_{ik}}, \quad H_i = -\sum_k p_{ik} a_{ik}, \\
    G_{ik} = p_{ik}; \quad G[\text{argmax\_rows}_q, \text{argmax\_cols}_q] = \text{argmax\_values}_q
    \ \forall q; \quad G_{i k(i)} \mathrel{+}= -h (\gamma_i + H_i) \ (\text{skipped where clamped}_i),

and ``u`` is overwritten with G, the strip's gradient on the distances per unit of the row
scale c_i = s_i r_i (the distance's GEMMs apply c_i). The derivation is in ``docs/streaming.md``.

Implementations must agree with :class:`~contextual_loss.engine.kernels.eager.EagerKernels`
(the readable reference) up to rounding, and be deterministic: the same inputs give bit-identical
outputs whatever the number of threads or the scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

__all__ = ["ColumnMax", "Deferral", "RowStats", "StripKernels"]


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of one strip: (R,) tensors (views into the engine's (N,) tensors, or gathered copies).

    Attributes:
        umax: max_k u_ik (the compute dtype).
        argmin: k(i), int64, the first column attaining ``umax`` (the row minimum of d).
        scale: s_i = 1 / ((m_i + eps) h).
        log_norm: L_i = log1p(sum_{k != k(i)} exp(t_ik)).
        clamped: bool, whether m_i was negative by rounding and clamped to 0 (no gradient flows
            through m_i then, as in the dense engine), or ``None`` when not wanted.

    """

    umax: Tensor
    argmin: Tensor
    scale: Tensor
    log_norm: Tensor
    clamped: Tensor | None


@dataclass(frozen=True)
class ColumnMax:
    """The running column maximum over strips: ``best`` (M,) starts at -inf, ``index`` (M,) int64."""

    best: Tensor
    index: Tensor


@dataclass(frozen=True)
class Deferral:
    """The near-field test of a strip's rows, done by :meth:`StripKernels.forward` while it reads them.

    Attributes:
        floor: (R,) a row is deferred when its maximum affinity exceeds ``floor[i]`` (``inf``: never).
        deferred: (R,) bool, written: which rows were deferred.
        block_max: (R, ceil(M / NEAR_BLOCK)) written for the deferred rows (other rows: unspecified):
            their maxima over blocks of :data:`~contextual_loss.engine.strips.NEAR_BLOCK` columns,
            which the near-field search uses to skip blocks.

    """

    floor: Tensor
    deferred: Tensor
    block_max: Tensor


class StripKernels(Protocol):
    """The per-strip elementwise work of the streaming engine (see the module docstring for the maths)."""

    #: ``"eager"``, ``"native"`` or ``"triton"``.
    name: str

    def forward(
        self,
        u: Tensor,
        base: Tensor,
        rows: RowStats,
        *,
        clamp: bool,
        band_width: float,
        eps: float,
        columns: ColumnMax | None,
        row0: int,
        write_a: bool,
        defer: Deferral | None = None,
        only: Tensor | None = None,
    ) -> int:
        """Row statistics of the strip ``u`` (R, M) into ``rows``; then ``u`` := a, or update ``columns``.

        Args:
            u: (R, M) affinities, contiguous; a when ``write_a``, else unspecified afterwards (the
                rows deferred or not selected by ``only`` are left untouched).
            base: (R,) beta_i of the distance.
            rows: where the (R,) statistics are written (``rows.clamped`` may be ``None``).
            clamp: clamp m_i at 0 (cosine and squared L2, whose GEMM form can round below 0).
            band_width: h.
            eps: epsilon of the relative distance.
            columns: the running column maximum to update (ignored when ``write_a``).
            row0: the global index of the strip's first row (for ``columns.index``).
            write_a: overwrite ``u`` with a = log CX instead of updating ``columns``.
            defer: leave the rows whose maximum exceeds ``defer.floor`` for later (see the module
                docstring); at most one of ``defer`` and ``only`` is given.
            only: (R,) bool, process only these rows.

        Returns:
            The number of deferred rows (0 without ``defer``).

        """
        ...

    def backward(
        self,
        u: Tensor,
        rows: RowStats,
        *,
        gamma_base: Tensor,
        band_width: float,
        argmax_rows: Tensor,
        argmax_cols: Tensor,
        argmax_values: Tensor,
    ) -> None:
        """Overwrite the recomputed affinities ``u`` (R, M) with the strip's gradient G (see module docstring).

        Args:
            u: (R, M) recomputed affinities of the strip's rows, contiguous.
            rows: the forward statistics of those rows ((R,) each; ``clamped`` is not ``None``).
            gamma_base: (R,) gamma_i / c_i without the entropy: sum_{j: i*(j) = i} g_j A_j / r_i.
            band_width: h.
            argmax_rows: (Q,) int64 strip-local rows of the best-match entries to set, in
                non-decreasing order (so that an implementation can give each row's entries to the
                thread that computes the row).
            argmax_cols: (Q,) int64 their columns; the pairs are distinct.
            argmax_values: (Q,) their values (the closed form of s r p - s g at those entries, per c_i).

        """
        ...

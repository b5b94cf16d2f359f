"""LinearSVC's objective solved in kernel coordinates, for many problems and a path of C values at once.

Each binary problem is liblinear's L2R_L2LOSS_SVC, what ``LinearSVC(penalty="l2",
loss="squared_hinge")`` minimises (its bias a regularised constant feature 1, so K includes + 1):

    min_w  1/2 |w|^2 + sum_i C_i max(0, 1 - y_i w.z_i)^2      (i over the problem's training rows)

With w = Z^T beta and scores s = K beta (K = Z Z^T), the finite Newton method (Keerthi & DeCoste,
JMLR 2005; Chapelle, Neural Computation 2007) needs K only. Given the active set
S = {i : y_i s_i < 1}, the Newton point is a ridge regression on the active rows,

    beta_S = (K_SS + diag(1 / (2 C_i)))^-1 y_S ,   beta = 0 elsewhere,

and when the scores at that point have the same active set, it is the exact optimum (the objective
is quadratic on that piece). Otherwise an exact line search along the step decreases the objective
and the next active set is taken. Warm-started, it typically stops after 1-4 linear solves.

The linear solves: a Cholesky of K_SS + D when S is small, or an update of a factorisation of a
nearby set made at the same C (``_Factor.solve_near``: consecutive active sets, and a fold's and
the all-rows problem's, differ by a few rows); preconditioned conjugate gradients otherwise, for
all such problems at once (one K @ V product per iteration for the whole batch), with a Nyström
preconditioner (Frangella, Tropp & Udell, SIMAX 2023): a rank-m F with F F^T <= K from a randomized
range finder, P = D + F_S F_S^T applied per problem through Woodbury in O(n m). The preconditioned
condition number is at most 1 + 2 C_i lambda_{m+1}(K): small where S is large (small C), which is
where a Cholesky would cost most. Those solves start loose and are tightened as the active set
settles (inexact Newton); the last one, which the stopping test relies on, is tight.

Who shares what (``SquaredHingeBatch``): one K for every fold, class and C; the problems of every
fold and class are one batch; C values are solved in ascending order, each problem starting from its
solution at the previous C; and a problem may start from another's active set and factorisation
(the folds from the all-rows problem, which differs from each of them by a tenth of the rows).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from classifiers.threads import BlasThreads

CG_TOL = 1e-7  # relative residual of each conjugate-gradient solve
STALL = 1e-13  # relative objective decrease below which a Newton step counts as no progress
DIRECT_COST = 4.0  # a Cholesky flop (small, gathered, one at a time) costs this many batched-product flops
LOOSE_TOL = 1e-3  # conjugate gradients stop here while the active set is still moving (inexact Newton)
GATHER_COST = 20.0  # gathering one entry of K_SS costs about this many flops of a triangular solve
FACTOR_BYTES = 384 * 2**20  # Cholesky factors kept for updates, at most (they are |S|^2 float64 each)


class SquaredHingeBatch:
    """P binary problems over the rows of one kernel matrix, solved for one C at a time.

    ``K``: (n, n) float64 positive semi-definite (include the + 1 of a regularised bias), exact to
    float64 rounding (``classifiers.linear.gram_matrix``): a float32 K's error can exceed 1/(2C).
    ``train``: (n, P) bool, the rows each problem trains on (the others are only scored).
    ``Y``: (n, P) +1/-1 labels. ``weight``: (n, P) per-row multipliers of C (class weights), or None.
    After ``solve(C)``, ``beta`` (n, P) holds the dual coefficients (w = Z^T beta) and ``scores`` (n, P)
    the decision values K beta of every row, training or not.
    """

    def __init__(self, K: np.ndarray, train: np.ndarray, Y: np.ndarray, weight: np.ndarray | None = None, *,
                 features: np.ndarray | None = None, rank: int = 48, max_newton: int = 100, seed: int = 0):
        self.K = K
        # K = features @ features.T exactly (float64): products through it cost 4 n p instead of 2 n^2
        self.features = features if features is not None and 2 * features.shape[1] < len(K) else None
        self.train = np.asarray(train, dtype=bool)
        self.Y = np.asarray(Y, dtype=np.float64)
        self.weight = np.ones(self.Y.shape) if weight is None else np.asarray(weight, dtype=np.float64)
        self.beta = np.zeros(self.Y.shape)
        self.scores = np.zeros(self.Y.shape)
        self.rank, self.max_newton, self.seed = rank, max_newton, seed
        self._nystrom = None
        self._factors, self._factors_C, self._factor_bytes = {}, None, 0  # column -> _Factor at C
        self.stats = {"newton": 0, "cholesky": 0, "updates": 0, "cg_iterations": 0, "products": 0}
        self._blas = BlasThreads()  # one thread, except products of K with many columns

    # ------------------------------------------------------------------ the Newton loop
    def solve(self, C: float, cols=None, start_active: np.ndarray | None = None,
              start_beta: np.ndarray | None = None, start_from: np.ndarray | None = None) -> None:
        """Minimise problems ``cols`` (default: all) at this C, starting from the current beta.

        ``start_active`` (n, len(cols)) bool: the active sets to take for the first Newton point
        instead of the current ones (e.g. another problem's optimum, restricted to these rows),
        ``start_beta`` the first guess of an iterative solve for it (e.g. that optimum's beta), and
        ``start_from`` (len(cols),) the problem whose factorisation at this C each may update.
        """
        cols = np.arange(self.Y.shape[1]) if cols is None else np.asarray(cols)
        if C != self._factors_C:
            self._factors, self._factors_C, self._factor_bytes = {}, C, 0
        with self._blas.one():
            self._solve(C, cols, start_active, start_beta, start_from)

    def _solve(self, C, cols, start_active, start_beta, start_from) -> None:
        d_all = 2.0 * C * self.weight[:, cols] * self.train[:, cols]  # 1 / D on training rows
        act = self.train[:, cols] & (self.Y[:, cols] * self.scores[:, cols] < 1) if start_active is None else start_active
        live = np.arange(len(cols))  # positions in cols still iterating
        tol = np.full(len(cols), LOOSE_TOL)  # of iterative solves: tightened to CG_TOL as they settle
        objective = self._objective(cols, d_all)
        for iteration in range(self.max_newton):
            if not len(live):
                return
            self.stats["newton"] += 1
            c = cols[live]
            Y, T, d = self.Y[:, c], self.train[:, c], d_all[:, live]
            a = act[:, live]
            first = iteration == 0
            guess = start_beta[:, live] if start_beta is not None and first else self.beta[:, c]
            sources = start_from[live] if start_from is not None and first else c
            new_beta, new_scores, exact, iterative = self._newton_point(a, Y, d, guess, c, sources, tol[live])
            step_beta, step_scores = new_beta - self.beta[:, c], new_scores - self.scores[:, c]
            same = (T & (Y * new_scores < 1) == a).all(axis=0)
            tight = ~iterative | (tol[live] <= CG_TOL)
            consistent = exact & same & tight
            t = np.ones(len(c))
            if not consistent.all():
                j = ~consistent
                t[j] = _line_search(self.scores[:, c[j]], step_beta[:, j], step_scores[:, j], Y[:, j], T[:, j], d[:, j])
            self.beta[:, c] += t * step_beta
            self.scores[:, c] += t * step_scores
            new_objective = self._objective(c, d)
            # a step from given start sets may rightly go nowhere; after that, no progress means converged
            # (to rounding: on badly scaled features, e.g. normalize='none', K's rounding errors can keep
            # a boundary row flipping between two active sets that are equally optimal to precision)
            no_progress = ((new_objective >= objective[live] - STALL * np.abs(objective[live])) | (t <= STALL)) & (
                iteration > 0 or start_active is None)
            stalled = no_progress & tight
            # inexact Newton: a loose solve that settles or stops helping is redone tightly; else tighten 10x
            tol[live] = np.where((same & exact) | no_progress, CG_TOL, np.maximum(tol[live] * 0.1, CG_TOL))
            objective[live] = new_objective
            act = self.train[:, cols] & (self.Y[:, cols] * self.scores[:, cols] < 1)
            live = live[~(consistent | stalled)]
        if len(live):
            from sklearn.exceptions import ConvergenceWarning

            warnings.warn(f"squared-hinge Newton solver: {len(live)} problem(s) did not converge in {self.max_newton} "
                          "iterations", ConvergenceWarning, stacklevel=2)

    def _objective(self, cols, d) -> np.ndarray:
        """1/2 |w|^2 + sum C_i max(0, 1 - y s)^2 per problem (d = 2 C_i on training rows)."""
        s, Y = self.scores[:, cols], self.Y[:, cols]
        hinge = np.maximum(0.0, 1.0 - Y * s)
        return 0.5 * np.einsum("ij,ij->j", self.beta[:, cols], s) + 0.5 * np.einsum("ij,ij->j", d, hinge * hinge)

    def _newton_point(self, act, Y, d, guess, cols, sources, tol):
        """beta_S = (K_SS + diag(1/d_S))^-1 y_S per problem and its scores K beta. Returns (beta, scores,
        exact, iterative): exact where solved to its tolerance, iterative where CG solved it."""
        n, p = Y.shape
        beta = np.zeros((n, p))
        scores = np.empty((n, p))
        exact = np.ones(p, dtype=bool)
        sizes = act.sum(axis=0)
        direct = sizes <= self._max_direct(d, sizes)
        for j in np.flatnonzero(direct):
            idx = np.flatnonzero(act[:, j])
            if len(idx):
                beta[idx, j] = self._direct(int(cols[j]), int(sources[j]), idx, Y[idx, j], 1.0 / d[idx, j])
        if direct.any():
            scores[:, direct] = self._product(beta[:, direct])
        iterative = ~direct
        if iterative.any():
            j = np.flatnonzero(iterative)
            start = np.where(act[:, j], guess[:, j], 0.0)
            beta[:, j], scores[:, j], exact[j] = self._pcg(act[:, j], Y[:, j], d[:, j], start, tol[j])
        return beta, scores, exact, iterative

    def _direct(self, col, source, idx, y, inv_d):
        """Solve (K_SS + diag(inv_d)) x = y on S = idx: by updating a factorisation of a nearby set made
        at this C (this problem's, else ``source``'s) when that is cheaper, else by a new Cholesky."""
        for owner in dict.fromkeys((col, source)):
            factor = self._factors.get(owner)
            if factor is not None:
                x = factor.solve_near(self.K, idx, y, inv_d)
                if x is not None:
                    self.stats["updates"] += 1
                    self._factors.setdefault(col, factor)
                    return x
        factor = _Factor(self.K, idx, inv_d)
        self.stats["cholesky"] += 1
        old = self._factors.get(col)
        if old is not None and all(f is not old for k, f in self._factors.items() if k != col):
            self._factor_bytes -= old.nbytes
        if self._factor_bytes + factor.nbytes <= FACTOR_BYTES:
            self._factors[col] = factor
            self._factor_bytes += factor.nbytes
        else:
            self._factors.pop(col, None)
        return factor.solve(y)

    def _max_direct(self, d, sizes) -> np.ndarray:
        """Largest active set solved by Cholesky: where its cost (|S|^3/3 flops, plus gathering K_SS)
        beats the expected conjugate-gradient work (iterations ~ sqrt(condition) of the preconditioned
        system, one product with K per iteration). DIRECT_COST calibrates the two on this machine."""
        n = len(self.K)
        if n <= 400:
            return np.full(d.shape[1], n)
        lam = self._nystrom_factor()[1]
        condition = 1.0 + d.max(axis=0) * lam
        iterations = 4.0 + np.sqrt(condition) / 2 * np.log(2.0 / CG_TOL)
        product = 4.0 * n * self.features.shape[1] if self.features is not None else 2.0 * n * n
        return np.cbrt(3.0 * iterations * product / DIRECT_COST)

    # ------------------------------------------------------------------ products and preconditioner
    def _product(self, V: np.ndarray) -> np.ndarray:
        self.stats["products"] += V.shape[1]
        with self._blas.all() if V.shape[1] >= 8 else self._blas.one():
            if self.features is not None:
                return self.features @ (self.features.T @ V)
            return self.K @ V

    def _nystrom_factor(self):
        """(F, lam_tail): F (n, m) with F F^T <= K capturing its top m directions, and an estimate of
        the largest eigenvalue of K - F F^T (what the preconditioner leaves)."""
        if self._nystrom is None:
            n = len(self.K)
            m = min(self.rank, n - 1)
            rng = np.random.default_rng(self.seed)
            Q, _ = np.linalg.qr(self.K @ (self.K @ rng.standard_normal((n, m + 8))))  # one power iteration
            Q = Q[:, :m + 8]
            KQ = self.K @ Q
            M = Q.T @ KQ
            mu, V = np.linalg.eigh((M + M.T) / 2)
            keep = mu > mu[-1] * 1e-10
            F = KQ @ (V[:, keep] / np.sqrt(mu[keep]))  # Nystrom: F F^T = KQ (Q^T K Q)^-1 Q^T K <= K
            F = F[:, ::-1][:, :m]
            # the tail: power iterations on K - F F^T give its top eigenvalue
            v = rng.standard_normal(n)
            for _ in range(12):
                w = self.K @ v - F @ (F.T @ v)
                tail = float(np.linalg.norm(w) / np.linalg.norm(v))
                v = w
            self._nystrom = (np.ascontiguousarray(F), max(tail, 1e-12))
        return self._nystrom

    def _pcg(self, act, Y, d, start, tol):
        """Batched preconditioned CG for (K_SS + diag(1/d_S)) x = y_S, x = 0 off S. Returns (x, K x, converged)."""
        F, _ = self._nystrom_factor()
        m = F.shape[1]
        inv_d = np.where(act, 1.0 / np.where(act, d, 1.0), 0.0)
        # Woodbury: (D + F_S F_S^T)^-1 = d - d F (I + F^T d F)^-1 F^T d, with d = 1/D on S and 0 elsewhere
        dd = np.where(act, d, 0.0)
        inner = np.empty((act.shape[1], m, m))
        for j in range(act.shape[1]):
            inner[j] = F.T @ (dd[:, j, None] * F)
            inner[j].flat[:: m + 1] += 1.0
        inner = np.linalg.inv(inner)

        def precondition(R, cols):
            U = dd[:, cols] * R
            T = np.einsum("jab,bj->aj", inner[cols], F.T @ U)
            return U - dd[:, cols] * (F @ T)

        b = np.where(act, Y, 0.0)
        X = start.copy()
        KX = self._product(X)
        R = b - np.where(act, KX + inv_d * X, 0.0)
        Z = precondition(R, slice(None))
        Pd = Z.copy()
        rz = np.einsum("ij,ij->j", R, Z)
        target = tol * np.linalg.norm(b, axis=0)
        live = np.flatnonzero(np.linalg.norm(R, axis=0) > target)
        for _ in range(10 * len(X)):
            if not len(live):
                break
            self.stats["cg_iterations"] += 1
            P = Pd[:, live]
            KP_live = self._product(P)
            AP = np.where(act[:, live], KP_live + inv_d[:, live] * P, 0.0)
            alpha = rz[live] / np.einsum("ij,ij->j", P, AP)
            X[:, live] += alpha * P
            KX[:, live] += alpha * KP_live
            R[:, live] -= alpha * AP
            Zl = precondition(R[:, live], live)
            rz_new = np.einsum("ij,ij->j", R[:, live], Zl)
            Pd[:, live] = Zl + (rz_new / rz[live]) * P
            rz[live] = rz_new
            live = live[np.linalg.norm(R[:, live], axis=0) > target[live]]
        return X, KX, np.linalg.norm(R, axis=0) <= target * (1 + 1e-9)


class _Factor:
    """A Cholesky factorisation of A_SS = K_SS + diag(inv_d) that also solves on nearby sets.

    For S' = (S - R) + N (R rows dropped, N rows added) and B = S - R, with A^-1 applied through the
    factor: A_BB^-1 u = z_B - (A^-1)_BR ((A^-1)_RR)^-1 z_R where z = A^-1 [u; 0], and the rows N are
    added by block elimination (their Schur complement). Cost ~2 |S|^2 (1 + |R| + |N|) instead of
    gathering K_S'S' and factorising it (|S'|^3 / 3): worth it while the sets stay close.
    """

    def __init__(self, K, idx, inv_d):
        self.idx, self.inv_d = idx, inv_d
        A = np.take(K.reshape(-1), (idx[:, None] * len(K) + idx).reshape(-1)).reshape(len(idx), -1)
        A.flat[:: len(idx) + 1] += inv_d
        try:
            self.cho = cho_factor(A, lower=True, check_finite=False)
        except LinAlgError:
            # K is PSD to float64 rounding (~1e-16 of its largest entry): only a D = 1/(2C) below that fails
            raise LinAlgError(
                f"K_SS + 1/(2C) is singular to float64 precision (C up to {0.5 / inv_d.min():g} against kernel entries "
                f"up to {np.abs(A).max():g}): use a smaller C, or normalised rows (normalize='l2')") from None
        self.nbytes = A.nbytes

    def solve(self, y):
        return cho_solve(self.cho, y, check_finite=False)

    def solve_near(self, K, idx, y, inv_d):
        """x on ``idx`` (sorted), or None when a new factorisation would be cheaper."""
        S = self.idx
        s, m = len(S), len(idx)
        in_new = np.isin(S, idx, assume_unique=True)
        in_old = np.isin(idx, S, assume_unique=True)
        drop = np.flatnonzero(~in_new)  # positions in S
        add = idx[~in_old]
        q = 1 + len(drop) + len(add)
        if 2.0 * s * s * q + GATHER_COST * len(add) * m >= m ** 3 / 3 + GATHER_COST * m * m:
            return None
        keep = np.flatnonzero(in_new)  # positions in S of B, in idx order (both sorted)
        if not np.array_equal(self.inv_d[keep], inv_d[in_old]):
            return None  # other weights on the shared rows: not the same matrix
        B = S[keep]
        rhs = np.zeros((s, 1 + len(add)))
        rhs[keep, 0] = y[in_old]
        if len(add):
            rhs[keep, 1:] = K[np.ix_(B, add)]
        Z = cho_solve(self.cho, rhs, check_finite=False)
        if len(drop):
            E = np.zeros((s, len(drop)))
            E[drop, np.arange(len(drop))] = 1.0
            G = cho_solve(self.cho, E, check_finite=False)
            Z -= G @ np.linalg.solve(G[drop], Z[drop])
        u, E = Z[keep, 0], Z[keep, 1:]
        x = np.empty(m)
        if len(add):
            KNB = rhs[keep, 1:].T
            schur = K[np.ix_(add, add)] - KNB @ E
            schur.flat[:: len(add) + 1] += inv_d[~in_old]
            x_new = np.linalg.solve(schur, y[~in_old] - KNB @ u)
            x[~in_old] = x_new
            u = u - E @ x_new
        x[in_old] = u
        return x


def _line_search(s, step_beta, step_scores, Y, T, d, iterations: int = 60) -> np.ndarray:
    """Exact minimiser t >= 0 of the objective along beta + t step, per problem (piecewise quadratic in t).

    f(t) = 1/2 (beta + t db)^T K (beta + t db) + sum_T d/2 max(0, 1 - y (s + t ds))^2, with
    beta^T K db = s.db and db^T K db = db.ds. With m0 = y s and m1 = y ds, a row is active where
    m0 + t m1 < 1 and adds d m1 (1 - m0) - t d m1^2 to -f'(t). Safeguarded Newton on f'(t) in a bracket.
    """
    wd = np.einsum("ij,ij->j", s, step_beta)
    dd = np.einsum("ij,ij->j", step_beta, step_scores)
    m0, m1 = Y * s, Y * step_scores
    dm1 = np.where(T, d * m1, 0.0)
    linear, quadratic = dm1 * (1.0 - m0), dm1 * m1
    t = np.ones(s.shape[1])
    lo, hi = np.zeros_like(t), np.full_like(t, np.inf)
    for _ in range(iterations):
        active = m0 + t * m1 < 1
        q = np.einsum("ij,ij->j", active, quadratic)
        slope = wd + t * dd - np.einsum("ij,ij->j", active, linear) + t * q
        curvature = dd + q
        flat = curvature <= 0  # a zero step: nothing to search
        lo = np.where(slope < 0, t, lo)
        hi = np.where(slope > 0, t, hi)
        nt = t - slope / np.where(flat, 1.0, curvature)
        outside = ~((nt > lo) & (nt < hi))
        nt = np.where(outside, np.where(np.isinf(hi), 2 * t, 0.5 * (lo + hi)), nt)
        done = (np.abs(nt - t) <= 1e-12 * np.maximum(1.0, t)) | (slope == 0) | flat
        t = np.where((slope == 0) | flat, t, nt)
        if done.all():
            break
    return t

"""BLAS threads for the heads' own numerics.

Many small factorisations and products run best on one BLAS thread: on a busy 2-core machine two
OpenBLAS threads made the svm's grid search 7x slower (160 s instead of 21 s), each small call
waiting for a descheduled sibling. Big products (the Gram matrix, a product of K with a whole batch)
keep the threads BLAS was given. Both are scoped: the caller's setting is restored on exit.
"""

from __future__ import annotations

from threadpoolctl import ThreadpoolController


class BlasThreads:
    def __init__(self):
        self._controller = ThreadpoolController()
        self.threads = max([1] + [lib.num_threads for lib in self._controller.select(user_api="blas").lib_controllers])

    def one(self):
        """Context manager: BLAS on one thread."""
        return self._controller.limit(limits=1, user_api="blas")

    def all(self):
        """Context manager: BLAS on the threads it had when this object was made."""
        return self._controller.limit(limits=self.threads, user_api="blas")

"""A scikit-learn grid search whose fits run on EzPool workers, through joblib.

scikit-learn runs the fits of ``GridSearchCV(n_jobs=...)`` with joblib, and
``import ezpool.joblib`` gives joblib a backend named ``"ezpool"``. Run it from the
root of a checkout::

    python examples/sklearn_grid.py
    python examples/sklearn_grid.py --mode parallel --n-jobs 2
    python examples/sklearn_grid.py --workers PYRO:worker@host1:21000 PYRO:worker@host2:21000

Without ``--workers`` the distributed run names two workers on free ports of this
machine; none answers there, so EzPool starts a generic worker at each for the
search, and stops them when it is done. Workers started by you
(``python -m ezpool.serve --port 21000`` on each machine, with scikit-learn
installed) are used as they are.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Optional, Sequence

from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import ezpool.joblib  # noqa: F401  (registers the "ezpool" joblib backend)

#: The grid: 3 x 2 candidates, each fitted on 3 folds.
GRID = {"C": [1, 10, 100], "gamma": [0.001, 0.0001]}


def free_local_uri() -> str:
    """A worker URI on a port of this machine that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"PYRO:worker@localhost:{port}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A scikit-learn grid search on EzPool, through joblib.")
    parser.add_argument(
        "--mode", "-m", choices=("serial", "parallel", "distributed"), default="distributed",
        help="where the fits run (default: distributed)",
    )
    parser.add_argument(
        "--workers", "-w", nargs="+", default=None,
        help="worker URIs in distributed mode (default: two started here on free ports)",
    )
    parser.add_argument(
        "--n-jobs", "-n", type=int, default=-1,
        help="joblib's n_jobs; in distributed mode the workers decide (default: -1, all)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    options = {}
    if args.mode == "distributed":
        options["workers"] = args.workers or [free_local_uri(), free_local_uri()]
        options["spawn"] = not args.workers  # start the two named here; never a mistyped one
        print("workers:", " ".join(options["workers"]))

    digits = load_digits()
    search = GridSearchCV(SVC(), GRID, cv=3, n_jobs=args.n_jobs)
    began = time.perf_counter()
    with parallel_config(backend="ezpool", mode=args.mode, **options):
        search.fit(digits.data, digits.target)
    took = time.perf_counter() - began

    fits = len(search.cv_results_["params"]) * search.n_splits_
    print(f"{fits} fits in {took:.1f} s ({args.mode})")
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        print(f"  {params}: {score:.4f}")
    print(f"best params: {search.best_params_}")
    print(f"best score: {search.best_score_:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

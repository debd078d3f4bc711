"""joblib (and scikit-learn) running on a real corral cluster through the joblib backend."""

from __future__ import annotations

import os
import sys
from typing import Any

import cloudpickle
import pytest
from parallel_client_harness import LiveCluster

import corral
from corral.plugins.parallel.client import Client

joblib = pytest.importorskip("joblib", reason="joblib is a test extra (pip install joblib)")

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = LiveCluster(tmp_path_factory.mktemp("corral"), threads=True, profile="default")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def rc(live: LiveCluster) -> Client:
    return live.client


def pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def test_parallel_runs_on_the_engines(rc: Client) -> None:
    rc.load_balanced_view().register_joblib_backend("corral-test")
    with joblib.parallel_backend("corral-test"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(pid_and_square)(i) for i in range(40))
    assert [sq for _, sq in out] == [i * i for i in range(40)]
    engine_pids = {e.pid for e in rc.engines.values()}
    assert {pid for pid, _ in out} <= engine_pids and os.getpid() not in engine_pids
    with joblib.parallel_backend("corral-test"):
        assert joblib.Parallel(n_jobs=-1).n_jobs == -1
        with pytest.raises(corral.RemoteError) as info:  # as with ipyparallel's backend
            joblib.Parallel(n_jobs=2)(joblib.delayed(divmod)(1, i) for i in (1, 0, 2))
        assert info.value.ename == "ZeroDivisionError"


def test_documented_registration_with_a_default_client(
    live: LiveCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # corral.register_joblib_backend() connects Client() (the default profile's newest
    # cluster) on first use.
    monkeypatch.setenv("CORRAL_DIR", str(live.corral_dir))
    corral.register_joblib_backend()
    with joblib.parallel_backend("corral"):
        out = joblib.Parallel()(joblib.delayed(pid_and_square)(i) for i in range(6))
    assert [sq for _, sq in out] == [0, 1, 4, 9, 16, 25]
    # A direct view is used through a load-balanced view of its engines: each batch once.
    corral.register_joblib_backend("corral-view", view=live.client[:])
    with joblib.parallel_backend("corral-view"):
        out = joblib.Parallel()(joblib.delayed(pid_and_square)(i) for i in range(6))
    assert [sq for _, sq in out] == [0, 1, 4, 9, 16, 25]


def test_scikit_learn_grid_search(rc: Client) -> None:
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is an optional test extra")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    del sklearn
    rc.load_balanced_view().register_joblib_backend("corral-sk")
    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "kernel": ["linear", "rbf"]}, cv=3)
    with joblib.parallel_backend("corral-sk"):
        search.set_params(n_jobs=-1).fit(X, y)
    local = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "kernel": ["linear", "rbf"]}, cv=3)
    local.fit(X, y)
    assert search.best_params_ == local.best_params_
    assert search.best_score_ == pytest.approx(local.best_score_)

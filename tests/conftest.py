import numpy as np
import pytest

from cases import CASES


def pytest_generate_tests(metafunc):
    # Tests taking (case, hp) run for every hyperparameter set of every case
    # of their module's CASE_TABLE (a part of cases.CASES), or of every case.
    if {"case", "hp"} <= set(metafunc.fixturenames):
        table = getattr(metafunc.module, "CASE_TABLE", CASES)
        params = [pytest.param(case, hp, id=f"{case.name}-{i}")
                  for case in table for i, hp in enumerate(case.grid)]
        metafunc.parametrize(("case", "hp"), params)


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param

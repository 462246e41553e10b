import numpy as np
import pytest

from cases import CASES


def pytest_generate_tests(metafunc):
    # Tests taking (case, hp) run for every hyperparameter set of every case.
    if {"case", "hp"} <= set(metafunc.fixturenames):
        params = [pytest.param(case, hp, id=f"{case.name}-{i}")
                  for case in CASES for i, hp in enumerate(case.grid)]
        metafunc.parametrize(("case", "hp"), params)


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param

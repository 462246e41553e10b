"""The step functions' docstrings: their examples run as shown, and their
update rules are the reference's."""

from __future__ import annotations

import doctest
import re

import pytest

from lrfast import reference, steps, steps_adafactor, steps_adaptive, steps_lr_free

MODULES = (steps, steps_lr_free, steps_adaptive, steps_adafactor)
STEP_FUNCTIONS = {name: getattr(module, name) for module in MODULES for name in module.__all__}
EXAMPLES = {test.name.rsplit(".", 1)[-1]: test for module in MODULES
            for test in doctest.DocTestFinder().find(module) if test.examples}


def test_every_step_function_has_an_example():
    assert sorted(EXAMPLES) == sorted(STEP_FUNCTIONS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_as_shown(name):
    runner = doctest.DocTestRunner()
    runner.run(EXAMPLES[name])
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("name", sorted(STEP_FUNCTIONS))
def test_update_rule_is_the_reference_s(name):
    """Every assignment line of the reference's maths (``x = ...``) appears in
    the step's docstring, word for word."""
    rules = [line.strip() for line in getattr(reference, name).__doc__.splitlines()
             if re.match(r"\s*\w+ = ", line)]
    assert rules
    for rule in rules:
        assert rule in STEP_FUNCTIONS[name].__doc__, rule

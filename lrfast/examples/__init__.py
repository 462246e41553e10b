"""Small worked examples shared by ``lrfast demo`` and the tests.

:mod:`lrfast.examples.digits_mlp`: a NumPy MLP on scikit-learn's bundled
digits, trained with the fused step functions (needs ``lrfast[demo]``).
"""

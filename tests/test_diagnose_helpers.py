"""Helpers of a pass over many cells: the diagnosis' numpy helpers give exactly what numpy's own
functions give (they only skip numpy's wrappers, which a thousand-cell report calls some 13,000
times), and the garbage collector paused for a pass is restored as it was."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from prefwatch.core.diagnose import nanargmax, window_mean

VALUES = hnp.arrays(
    np.float64,
    st.integers(0, 40),
    elements=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e300, -1e-300])),
)


@given(VALUES)
def test_window_mean_is_numpys_mean_of_the_finite_values(values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if not len(finite):
        assert window_mean(values) is None
        return
    with np.errstate(over="ignore", invalid="ignore"):  # a sum past 1e308 warns either way
        expected = float(finite.mean())
        got = window_mean(values)
    assert got == expected or (got is not None and np.isnan(got) and np.isnan(expected))


@given(VALUES)
def test_nanargmax_is_numpys(values: np.ndarray) -> None:
    if not len(values) or np.isnan(values).all():
        with pytest.raises(ValueError):
            nanargmax(values)
        return
    assert nanargmax(values) == int(np.nanargmax(values))


def test_the_collector_is_paused_for_a_pass_and_restored_as_it_was() -> None:
    import gc

    from prefwatch.analysis.analyse import collector_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failing pass")
    assert gc.isenabled()  # on again, even after an error
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # off before: left off
    finally:
        gc.enable()

"""scikit-learn's own estimator checks of SymnetClassifier and SymnetRegressor. A file of their
own: they compile a model for each of the checks' datasets, and pytest-xdist runs a file on one
worker, beside the others."""

import pytest
from sklearn.utils.estimator_checks import check_estimator

from symnet.sklearn import SymnetClassifier, SymnetRegressor


@pytest.mark.filterwarnings("ignore:Skipping check check_array_api_input")
@pytest.mark.parametrize("estimator", [SymnetClassifier(), SymnetRegressor()],
                         ids=lambda e: type(e).__name__)
def test_every_estimator_check_passes(estimator):
    results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert not failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}  # needs SCIPY_ARRAY_API and array-api-strict

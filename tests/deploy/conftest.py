from __future__ import annotations

import pytest

# The invariants live in helper modules: let pytest explain their failing asserts too.
pytest.register_assert_rewrite("tests.deploy.k8s", "tests.deploy.dockerfile")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: builds the project into a fresh virtualenv (about a minute; runs in CI)"
    )

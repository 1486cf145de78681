"""Shared test setup: 8 fake CPU devices (set before JAX is imported) and the data path."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ROBERTAX_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def test_data() -> pathlib.Path:
    path = data_dir()
    if not path.is_dir():
        pytest.fail(f"test data not found at {path}; set ROBERTAX_TEST_DATA")
    return path

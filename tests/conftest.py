from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"the real data must be at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def scientific_mm(shared_data):
    from mp4sr.data import load_dataset

    return load_dataset(shared_data / "amazon-scientific-mm")


@pytest.fixture(scope="session")
def scientific(shared_data):
    from mp4sr.data import load_dataset

    return load_dataset(shared_data / "amazon-scientific")

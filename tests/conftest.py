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


@pytest.fixture
def scientific_mm_with(shared_data, tmp_path):
    """A function: a folder named ``name`` holding links to the files of amazon-scientific-mm whose
    suffixes are in ``keep`` beside its sequences (``.text``, ``.feat1CLS`` text vectors, ``.feat3CLS``
    image vectors): the same real data with fewer modalities."""
    def make(name: str, keep: tuple[str, ...]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        sequences = (".item2index", ".user2index", ".train.inter", ".valid.inter", ".test.inter")
        for suffix in sequences + keep:
            (folder / f"Scientific{suffix}").symlink_to(shared_data / "amazon-scientific-mm" / f"Scientific{suffix}")
        return folder

    return make

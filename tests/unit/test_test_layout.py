"""pytest imports test modules by their basename (the folders are not packages), so two test files
of one name in different folders break collection of the whole session. Catch it here, where the
unit run (seconds) reports it, rather than in the cluster run."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []

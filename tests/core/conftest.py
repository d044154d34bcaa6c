import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from core_helpers import random_concept  # noqa: E402


@pytest.fixture
def concept():
    return random_concept()

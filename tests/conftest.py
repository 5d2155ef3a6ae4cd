import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get('DR_DATA', ROOT.parent/'shared'/'data'))

@pytest.fixture(scope='session')
def shared():
    "The real-data folder ../shared/data, or skip the test when it is absent."
    if not (SHARED/'labels'/'trainLabels.csv').exists(): pytest.skip(f'real data folder {SHARED} not found')
    return SHARED

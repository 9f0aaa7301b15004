import logging

import pytest
import torch

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random weights at WARNING


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

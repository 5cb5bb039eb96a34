import pytest
import torch

# One torch thread: the tests use small tensors, for which a second thread only adds
# synchronization (10× slower on a loaded 2-core machine); physics does not depend on it.
torch.set_num_threads(1)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)

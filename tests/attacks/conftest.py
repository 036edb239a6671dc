import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run thousands of tiny forwards, where a second OpenMP thread only adds waiting.

    On a loaded 2-core machine two threads made a tiny attack step 100x slower (120 ms vs 1 ms).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

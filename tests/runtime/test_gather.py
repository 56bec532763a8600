"""all_gather_indexed: a step's (positions, values) from every rank, padded rows dropped."""

import torch

from dawntrain.runtime.distributed import all_gather_indexed


def test_one_process_gets_back_its_positions_and_values_in_their_dtype_and_shape():
    index = torch.tensor([7, 0, 123456789])  # float64 carries positions past float32's 2**24
    losses = torch.tensor([0.5, 1.5, 2.5])
    probs = torch.softmax(torch.randn(3, 4), 1)
    for values in (losses, probs):
        got_index, got = all_gather_indexed(index, values, batch=5)
        assert torch.equal(got_index, index)
        assert got.dtype == values.dtype and got.shape == values.shape
        torch.testing.assert_close(got, values)


def test_a_share_smaller_than_the_batch_leaves_no_padding_rows():
    got_index, got = all_gather_indexed(torch.tensor([], dtype=torch.long), torch.zeros(0, 2), 4)
    assert got_index.numel() == 0 and got.shape == (0, 2)

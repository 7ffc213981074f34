"""DevicePrefetcher: the loader's batches, in order, one ahead; on a GPU copied on a side
stream that the consuming stream waits for."""
import pytest
import torch
from torch.utils.data import Dataset

from semask.data import DevicePrefetcher, train_loader


class KeyedTensors(Dataset):
    """Item (index, seed) -> (image [3, 8, 8] filled from the key, label [8, 8], name)."""

    def __len__(self):
        return 5

    def __getitem__(self, key):
        index, seed = key
        image = torch.full((3, 8, 8), float(index)) + torch.arange(64.0).view(8, 8) * 1e-3
        label = torch.full((8, 8), seed % 7, dtype=torch.long)
        return image, label, f"item{index}"


def _loader(pin_memory=False):
    return train_loader(KeyedTensors(), batch_size=2, seed=3, rank=0, world_size=1, start_sample=0,
                        num_workers=0, pin_memory=pin_memory)


def test_prefetcher_gives_the_loader_batches_in_order():
    direct = iter(_loader())
    expected = [next(direct) for _ in range(6)]
    prefetcher = DevicePrefetcher(_loader(), "cpu")
    got = []
    for i in range(6):
        got.append(prefetcher.next())
        if i % 2:  # a second prefetch before next() must not skip a batch
            prefetcher.prefetch()
            prefetcher.prefetch()
    for (gi, gl, gn), (ei, el, en) in zip(got, expected):
        assert torch.equal(gi, ei) and torch.equal(gl, el) and gn == en


@pytest.mark.gpu
def test_gpu_prefetcher_copies_pinned_batches_and_orders_the_streams():
    direct = iter(_loader())
    expected = [next(direct) for _ in range(4)]
    loader = _loader(pin_memory=True)
    assert next(iter(loader))[0].is_pinned()
    prefetcher = DevicePrefetcher(loader, "cuda")
    for images_ref, labels_ref, names_ref in expected:
        # a slow side stream: a consumer that did not wait for it would read the copy early
        with torch.cuda.stream(prefetcher.stream):
            torch.cuda._sleep(50_000_000)
        prefetcher.prefetch()
        images, labels, names = prefetcher.next()
        assert images.is_cuda and labels.is_cuda and names == names_ref
        sums = torch.stack([images.double().sum(), labels.double().sum()])  # on the current stream
        assert sums.tolist() == [images_ref.double().sum().item(), labels_ref.double().sum().item()]
        assert torch.equal(images.cpu(), images_ref) and torch.equal(labels.cpu(), labels_ref)


@pytest.mark.gpu
def test_gpu_batch_memory_is_not_reused_while_the_current_stream_reads_it():
    """The next batch's copy, on the side stream, must not land in the memory of a batch
    that the current stream's queued work still reads (record_stream): the read is held up
    by a sleep, the batch is released, the next one is fetched."""
    direct = iter(_loader())
    first = next(direct)
    prefetcher = DevicePrefetcher(_loader(pin_memory=True), "cuda")
    images, labels, _ = prefetcher.next()
    torch.cuda._sleep(100_000_000)
    snapshot = (images.clone(), labels.clone())  # queued behind the sleep
    del images, labels
    prefetcher.prefetch()
    torch.cuda.synchronize()
    assert torch.equal(snapshot[0].cpu(), first[0]) and torch.equal(snapshot[1].cpu(), first[1])

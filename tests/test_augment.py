import torch

from camlt.data import BatchLoader, TensorImageSet, random_crop_flip


def test_crop_flip_equals_per_image_reference():
    gen = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 255, (6, 2, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(batch, 2, torch.Generator().manual_seed(3))
    oy, ox = torch.randint(0, 5, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2))
    for i in range(6):
        ref = padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


def test_loader_is_a_function_of_seed_and_epoch():
    data = TensorImageSet(
        torch.randint(0, 255, (50, 1, 8, 8), dtype=torch.uint8),
        torch.arange(50) % 5,
        [str(i) for i in range(5)],
        (0.5,),
        (0.25,),
    )
    a = BatchLoader(data, 8, train=True, seed=1, pad=2)
    b = BatchLoader(data, 8, train=True, seed=1, pad=2)
    a.set_epoch(3)
    b.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(4)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])
    assert len(a) == 6 and sum(1 for _ in a) == 6


def test_eval_loader_keeps_every_image_in_order():
    data = TensorImageSet(
        torch.zeros(10, 1, 4, 4, dtype=torch.uint8),
        torch.arange(10),
        list("abcdefghij"),
        (0.0,),
        (1.0,),
    )
    labels = torch.cat([y for _, y in BatchLoader(data, 4, train=False)])
    assert labels.tolist() == list(range(10))

import numpy as np
import pytest
import torch

from cir.modality_gap import ModalityGap, gap_from_sums, gap_sums, modality_gap


def numpy_gap(image: np.ndarray, text: np.ndarray) -> tuple[float, float]:
    """The reference: gap between the mean normalised rows, and the mean cosine of matching rows."""
    ni = image / np.linalg.norm(image, axis=1, keepdims=True)
    nt = text / np.linalg.norm(text, axis=1, keepdims=True)
    return float(np.linalg.norm(ni.mean(0) - nt.mean(0))), float((ni * nt).sum(1).mean())


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    out = modality_gap(torch.tensor(image), torch.tensor(text))
    assert (out["gap"].item(), out["pair_cosine"].item()) == pytest.approx(numpy_gap(image, text), rel=1e-5)


def test_sums_over_any_split_of_the_rows_give_the_numpy_gap_and_modality_gap():
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    whole = modality_gap(torch.tensor(image), torch.tensor(text))
    parts = [gap_sums(torch.tensor(image[rows]), torch.tensor(text[rows])) for rows in (slice(0, 0), slice(0, 4), slice(4, 9))]
    out = gap_from_sums({key: sum(part[key] for part in parts) for key in parts[0]})
    assert out.keys() == whole.keys() == {"gap", "pair_cosine"}
    assert (out["gap"].item(), out["pair_cosine"].item()) == pytest.approx(numpy_gap(image, text), rel=1e-5)
    for key in out:
        assert out[key].item() == pytest.approx(whole[key].item(), rel=1e-6)


def test_the_metric_class_over_batches_gives_the_numpy_gap_and_refuses_no_pairs():
    rng = np.random.default_rng(2)
    image, text = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    metric = ModalityGap(5)
    for rows in (slice(0, 0), slice(0, 4), slice(4, 9)):
        metric.update(torch.tensor(image[rows]), torch.tensor(text[rows]))
    out = metric.compute()
    assert (out["gap"].item(), out["pair_cosine"].item()) == pytest.approx(numpy_gap(image, text), rel=1e-5)
    empty = ModalityGap(5)
    empty.update(torch.zeros(0, 5), torch.zeros(0, 5))
    with pytest.raises(ValueError, match="at least one image-caption pair"):
        empty.compute()


def test_identical_modalities_have_no_gap():
    x = torch.randn(4, 3)
    out = modality_gap(x, 2 * x)
    assert out["gap"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["pair_cosine"].item() == pytest.approx(1.0, abs=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        modality_gap(torch.randn(3, 4), torch.randn(2, 4))

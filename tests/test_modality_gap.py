import numpy as np
import pytest
import torch

from cir.modality_gap import modality_gap


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    ni = image / np.linalg.norm(image, axis=1, keepdims=True)
    nt = text / np.linalg.norm(text, axis=1, keepdims=True)
    out = modality_gap(torch.tensor(image), torch.tensor(text))
    assert out["gap"].item() == pytest.approx(np.linalg.norm(ni.mean(0) - nt.mean(0)), rel=1e-5)
    assert out["pair_cosine"].item() == pytest.approx((ni * nt).sum(1).mean(), rel=1e-5)


def test_identical_modalities_have_no_gap():
    x = torch.randn(4, 3)
    out = modality_gap(x, 2 * x)
    assert out["gap"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["pair_cosine"].item() == pytest.approx(1.0, abs=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        modality_gap(torch.randn(3, 4), torch.randn(2, 4))

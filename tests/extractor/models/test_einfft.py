"""EinFFT against the SiMBA formulation written with separate real and imaginary parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvh.extractor.models.einfft import EinFFT


def _einfft_real_imag(x, w1, b1, w2, b2, nb, lambd=0.01):
    """SiMBA's equations with explicit real/imag block matmuls (float32)."""
    batch, length, dim = x.shape
    xf = torch.fft.fft2(x.view(batch, length, nb, dim // nb), dim=(1, 2), norm="ortho")

    def mm(v, w):
        return torch.einsum("...bd,bdk->...bk", v, w)

    r1 = F.relu(mm(xf.real, w1[0]) - mm(xf.imag, w1[1]) + b1[0])
    i1 = F.relu(mm(xf.real, w1[1]) + mm(xf.imag, w1[0]) + b1[1])
    r2 = mm(r1, w2[0]) - mm(i1, w2[1]) + b2[0]
    i2 = mm(r1, w2[1]) + mm(i1, w2[0]) + b2[1]
    z = torch.view_as_complex(F.softshrink(torch.stack([r2, i2], dim=-1), lambd))
    return torch.fft.ifft2(z, dim=(1, 2), norm="ortho").real.reshape(batch, length, dim)


def test_matches_the_real_imaginary_formulation():
    torch.manual_seed(0)
    mixer = EinFFT(32)
    with torch.no_grad():
        for p in mixer.parameters():
            p.mul_(20)  # large enough that ReLU and softshrink both cut
    x = torch.randn(2, 11, 32)
    expected = _einfft_real_imag(
        x, mixer.complex_weight_1, mixer.complex_bias_1, mixer.complex_weight_2, mixer.complex_bias_2, 4
    )
    out = mixer(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_parameter_shapes_and_init_scale():
    torch.manual_seed(0)
    mixer = EinFFT(384)
    assert mixer.complex_weight_1.shape == (2, 4, 96, 96)
    assert mixer.complex_bias_2.shape == (2, 4, 96)
    assert 0.018 < mixer.complex_weight_1.std() < 0.022

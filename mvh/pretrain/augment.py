"""Multi-crop augmentation of the authors' recipe: 2 global + N local crops, H&E normalisation.

As the MV_Hybrid authors' `dinov2/data/augmentations.py` applies it, every view gets RandomResizedCrop
(bicubic), a horizontal flip (p 0.5), ColorJitter(0.2, 0.2, 0.2, 0.1) at p 0.8, RandomGrayscale p 0.2 and
a Gaussian blur (kernel 9, sigma in [0.1, 2]) whose probability depends on the view: never for global
crop 1, 0.9 for global crop 2, 0.5 for local crops (DINOv2's `GaussianBlur(p)` blurs with probability
1 - p and they pass 1.0, 0.1, 0.5). No solarisation, no vertical flip (an opt-in extra here).

Every random draw comes from a `torch.Generator` passed in, so a crop set depends only on (seed, epoch,
tile): runs are reproducible with any number of loader workers and resume exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from mvh.extractor.models.mv_hybrid import HE_MEAN, HE_STD


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random `scale` share of the area at a random aspect ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def color_jitter(
    image: Image.Image,
    generator: torch.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> Image.Image:
    """Brightness/contrast/saturation/hue changes in a random order (PIL's C code: fast on small crops)."""
    ops = [
        (TF.adjust_brightness, (max(0.0, 1 - brightness), 1 + brightness)),
        (TF.adjust_contrast, (max(0.0, 1 - contrast), 1 + contrast)),
        (TF.adjust_saturation, (max(0.0, 1 - saturation), 1 + saturation)),
        (TF.adjust_hue, (-hue, hue)),
    ]
    for i in torch.randperm(len(ops), generator=generator).tolist():
        fn, (lo, hi) = ops[i]
        if hi > lo:
            image = fn(image, _uniform(lo, hi, generator))
    return image


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """torchvision's 1-d Gaussian taps: exp(-x^2 / 2 sigma^2) at x = -(k-1)/2 .. (k-1)/2, summing to 1."""
    half = (kernel_size - 1) * 0.5
    pdf = np.exp(-0.5 * (np.linspace(-half, half, kernel_size, dtype=np.float32) / np.float32(sigma)) ** 2)
    return (pdf / pdf.sum()).astype(np.float32)


def gaussian_blur(
    image: Image.Image, generator: torch.Generator, kernel_size: int, sigma: tuple[float, float]
) -> Image.Image:
    """torchvision's GaussianBlur(kernel_size, sigma range) on an RGB image, separably in numpy.

    One sigma is drawn uniformly for both axes; reflect padding; the float result is rounded back to
    uint8, as torchvision does for uint8 input. Equal to `TF.gaussian_blur` up to float rounding (tested),
    without its per-call conv2d, which dominated the crop time on a loaded CPU.
    """
    taps = gaussian_kernel1d(kernel_size, _uniform(sigma[0], sigma[1], generator))
    r = kernel_size // 2
    a = np.asarray(image, dtype=np.float32)
    height, width = a.shape[:2]
    padded = np.pad(a, ((r, r), (0, 0), (0, 0)), mode="reflect")
    a = sum(taps[i] * padded[i : i + height] for i in range(kernel_size))
    padded = np.pad(a, ((0, 0), (r, r), (0, 0)), mode="reflect")
    a = sum(taps[i] * padded[:, i : i + width] for i in range(kernel_size))
    return Image.fromarray(np.round(a).clip(0, 255).astype(np.uint8))


def to_normalized_tensor(
    image: Image.Image, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """`TF.normalize(TF.to_tensor(image), mean, std)` computed in numpy float32 (bit-identical, tested)."""
    # Per-op torch overhead made the torchvision pair the most expensive step of a crop on a busy CPU.
    x = np.asarray(image, dtype=np.float32) / np.float32(255)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@dataclass(frozen=True)
class MultiCropAugmentation:
    """Tile uint8 [H, W, 3] -> {"global_crops": 2 x [3, G, G], "local_crops": n x [3, L, L]}, normalised."""

    global_size: int = 256
    local_size: int = 112
    n_local_crops: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    horizontal_flip_probability: float = 0.5
    vertical_flip_probability: float = 0.0
    blur_probabilities: tuple[float, float, float] = (0.0, 0.9, 0.5)  # global 1, global 2, local
    blur_kernel_size: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = HE_MEAN
    std: tuple[float, float, float] = HE_STD

    def view(
        self,
        image: Image.Image,
        size: int,
        scale: tuple[float, float],
        generator: torch.Generator,
        blur_probability: float,
    ) -> torch.Tensor:
        """One augmented, normalised view float32 [3, size, size] of an RGB image."""
        top, left, h, w = random_resized_crop_box(image.height, image.width, scale, generator)
        x = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC)
        if torch.rand((), generator=generator) < self.horizontal_flip_probability:
            x = TF.hflip(x)
        vflip = self.vertical_flip_probability
        if vflip > 0 and torch.rand((), generator=generator) < vflip:
            x = TF.vflip(x)
        if torch.rand((), generator=generator) < self.jitter_probability:
            x = color_jitter(x, generator, self.brightness, self.contrast, self.saturation, self.hue)
        if torch.rand((), generator=generator) < self.grayscale_probability:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if blur_probability > 0 and torch.rand((), generator=generator) < blur_probability:
            x = gaussian_blur(x, generator, self.blur_kernel_size, self.blur_sigma)
        return to_normalized_tensor(x, self.mean, self.std)

    def __call__(self, tile: np.ndarray | torch.Tensor, generator: torch.Generator) -> dict[str, list]:
        """All crops of one tile, drawn from `generator`."""
        array = np.asarray(tile)
        if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
            array = array.transpose(1, 2, 0)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"expected an RGB tile [H, W, 3] or [3, H, W], got shape {array.shape}")
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(array))
        blur_1, blur_2, blur_local = self.blur_probabilities
        return {
            "global_crops": [
                self.view(image, self.global_size, self.global_scale, generator, blur)
                for blur in (blur_1, blur_2)
            ],
            "local_crops": [
                self.view(image, self.local_size, self.local_scale, generator, blur_local)
                for _ in range(self.n_local_crops)
            ],
        }

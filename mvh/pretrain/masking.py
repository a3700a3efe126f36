"""iBOT masks for the global crops: block-wise (BEiT style) or random patches, on a share of the images."""

from __future__ import annotations

import math

import torch


def random_mask(grid: tuple[int, int], n_masked: int, generator: torch.Generator) -> torch.Tensor:
    """Exactly `n_masked` patches chosen uniformly: bool [H*W]."""
    n = grid[0] * grid[1]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:n_masked]] = True
    return mask


def block_mask(
    grid: tuple[int, int],
    n_masked: int,
    generator: torch.Generator,
    min_block: int = 4,
    aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    max_tries: int = 10,
) -> torch.Tensor:
    """About `n_masked` patches as a union of random rectangles (aspect ratio in range): bool [H*W].

    Rectangles are drawn until the count is reached; a last top-up with random patches makes the count
    exact, so the masking ratio is what was asked for.
    """
    height, width = grid
    mask = torch.zeros(height, width, dtype=torch.bool)
    log_lo, log_hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    failures = 0
    while int(mask.sum()) < n_masked and failures < max_tries:
        remaining = n_masked - int(mask.sum())
        area = uniform(min(min_block, remaining), remaining)
        ratio = math.exp(uniform(log_lo, log_hi))
        h = int(round(math.sqrt(area * ratio)))
        w = int(round(math.sqrt(area / ratio)))
        if not (0 < h <= height and 0 < w <= width):
            failures += 1
            continue
        top = int(torch.randint(0, height - h + 1, (), generator=generator))
        left = int(torch.randint(0, width - w + 1, (), generator=generator))
        patch = mask[top : top + h, left : left + w]
        new = int((~patch).sum())
        if 0 < new <= remaining:
            patch[:] = True
            failures = 0
        else:
            failures += 1
    flat = mask.flatten()
    missing = n_masked - int(flat.sum())
    if missing > 0:
        free = torch.nonzero(~flat).flatten()
        flat[free[torch.randperm(len(free), generator=generator)[:missing]]] = True
    return flat


def sample_masks(
    n_images: int,
    grid: tuple[int, int],
    generator: torch.Generator,
    ratio_min: float = 0.1,
    ratio_max: float = 0.5,
    probability: float = 0.5,
    mode: str = "block",
) -> torch.Tensor:
    """Masks bool [n_images, H*W]: a `probability` share of images masked, ratios spread over [min, max].

    As in iBOT / DINOv2 the range is cut into one slice per masked image and each draws its ratio in its
    slice (so every batch sees the whole range); which images are masked is random.
    """
    if mode not in ("block", "random"):
        raise ValueError(f"mask mode must be 'block' or 'random', got {mode!r}")
    n_patches = grid[0] * grid[1]
    n_masked_images = int(n_images * probability)
    edges = torch.linspace(ratio_min, ratio_max, n_masked_images + 1)
    ratios = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(n_masked_images, generator=generator)
    masks = torch.zeros(n_images, n_patches, dtype=torch.bool)
    make = block_mask if mode == "block" else random_mask
    order = torch.randperm(n_images, generator=generator)
    for image, ratio in zip(order[:n_masked_images].tolist(), ratios.tolist(), strict=True):
        masks[image] = make(grid, int(n_patches * float(ratio)), generator)
    return masks

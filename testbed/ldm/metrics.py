"""Image-quality metrics against a reference image (the paper's reward and the usual companions).

All functions take float images in ``[0, 1]``, shaped ``[B, 3, H, W]`` (a single ``[3, H, W]`` image is accepted and
treated as ``B = 1``), and return one value per image as a float64 tensor ``[B]``.

* ``mse``: mean squared error over channels and pixels.
* ``neg_log_mse``: ``-ln(max(MSE, MSE_FLOOR))`` -- the paper's reward. The floor keeps identical images finite
  (``-ln(1e-10) = 23.03``) so a reward never becomes ``inf``.
* ``psnr_db``: ``10 log10(1 / max(MSE, MSE_FLOOR))`` (peak 1.0), capped at 100 dB by the same floor.
* ``ms_ssim``: pytorch_msssim's MS-SSIM at ``data_range = 1``. Its defaults (5 scales, 11-px window) need images
  larger than 160 px, and the library asserts ``smaller_side > (win - 1) * 16`` whatever the number of scales. For
  smaller images :func:`ms_ssim_settings` shrinks the window to the largest odd size that passes that check and
  uses as many scales (at most 5) as keep the coarsest scale at least one window wide, with the first standard
  weights renormalised to sum to 1 when fewer than 5 scales fit. A 128x128 image gets a 7-px window and 5 scales, 64x64 a 3-px window and 5
  scales; 32 px and below cannot be scored (use ``ssim`` there). The settings used are reported by
  :func:`ms_ssim_settings` so a dataset can record them.

FID / LPIPS / CLIP score need network weights that megbed never downloads: see :mod:`megbed.testbed.ldm.feature_metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megbed.testbed.ldm.errors import MetricError

MSE_FLOOR = 1e-10
# Wang et al. 2003 scale weights (pytorch_msssim's default), coarsest scale last.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_RANGE_TOLERANCE = 1e-4


def as_image_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise MetricError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise MetricError(f"{name} must be [B, C, H, W] or [C, H, W], got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise MetricError(f"{name} must be a float tensor in [0, 1], got {x.dtype}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise MetricError(f"{name} holds NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise MetricError(f"{name} must lie in [0, 1], its values span [{lo:.4g}, {hi:.4g}]")
    return x.clamp(0.0, 1.0)


def _pair(image: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_image_batch(image, "image"), as_image_batch(reference, "reference")
    if x.shape[1:] != y.shape[1:] or (x.shape[0] != y.shape[0] and y.shape[0] != 1):
        raise MetricError(f"image {list(x.shape)} and reference {list(y.shape)} differ in shape")
    return x, y.to(x.device).expand_as(x)


def mse(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, ``[B]`` float64 (a single reference broadcasts over the batch)."""
    x, y = _pair(image, reference)
    return ((x - y) ** 2).mean(dim=(1, 2, 3))


def neg_log_mse(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The paper's reward ``-ln MSE`` per image, with MSE floored at :data:`MSE_FLOOR`."""
    return -torch.log(mse(image, reference).clamp_min(MSE_FLOOR))


def psnr_db(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for peak 1.0, per image (at most 100 dB)."""
    return 10.0 * torch.log10(1.0 / mse(image, reference).clamp_min(MSE_FLOOR))


@dataclass(frozen=True)
class MsSsimSettings:
    """Window and scales MS-SSIM uses for one image size.

    Attributes
    ----------
    win_size : int
        Gaussian window side in pixels (odd), sigma 1.5.
    weights : tuple[float, ...]
        One weight per scale, finest first; their count is the number of scales.
    """

    win_size: int
    weights: tuple[float, ...]

    @property
    def levels(self) -> int:
        return len(self.weights)


def ms_ssim_settings(height: int, width: int) -> MsSsimSettings:
    """The MS-SSIM window and scales for an ``height x width`` image (see the module docstring).

    Raises
    ------
    MetricError
        The image is 32 px or smaller on its shorter side.
    """
    side = min(int(height), int(width))
    for win in (11, 9, 7, 5, 3):
        if side > (win - 1) * 16:  # pytorch_msssim's own check, whatever the number of scales
            levels = min(len(MS_SSIM_WEIGHTS), int(math.floor(math.log2(side / win))) + 1)
            if levels == len(MS_SSIM_WEIGHTS):
                return MsSsimSettings(win, MS_SSIM_WEIGHTS)
            w = MS_SSIM_WEIGHTS[:levels]
            return MsSsimSettings(win, tuple(v / sum(w) for v in w))
    raise MetricError(f"MS-SSIM needs images larger than 32 px on the shorter side, got {height}x{width}; "
                      "use ssim, psnr_db or mse for images this small")


def ms_ssim(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """MS-SSIM per image (pytorch_msssim, data range 1), ``[B]`` float64; higher is better, 1 = identical."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    x, y = _pair(image, reference)
    settings = ms_ssim_settings(x.shape[-2], x.shape[-1])
    return _ms_ssim(x, y, data_range=1.0, size_average=False, win_size=settings.win_size,
                    weights=list(settings.weights))


def ssim(image: torch.Tensor, reference: torch.Tensor, win_size: int | None = None) -> torch.Tensor:
    """Single-scale SSIM per image (pytorch_msssim, data range 1); the window shrinks to fit small images."""
    from pytorch_msssim import ssim as _ssim

    x, y = _pair(image, reference)
    side = min(x.shape[-2:])
    win = win_size or max(w for w in (11, 9, 7, 5, 3, 1) if w <= side)
    if win % 2 == 0 or win > side:
        raise MetricError(f"SSIM window {win} must be odd and at most the image side {side}")
    return _ssim(x, y, data_range=1.0, size_average=False, win_size=win)


def quality(image: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """All built-in metrics at once: ``mse``, ``neg_log_mse``, ``psnr_db`` and ``ms_ssim`` (``ssim`` instead for
    images of 32 px or less), each ``[B]`` float64."""
    err = mse(image, reference)
    out = {"mse": err, "neg_log_mse": -torch.log(err.clamp_min(MSE_FLOOR)),
           "psnr_db": 10.0 * torch.log10(1.0 / err.clamp_min(MSE_FLOOR))}
    x = as_image_batch(image, "image")
    if min(x.shape[-2:]) > 32:
        out["ms_ssim"] = ms_ssim(image, reference)
    else:
        out["ssim"] = ssim(image, reference)
    return out

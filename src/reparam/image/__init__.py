"""Image codec (PRANC paper, section 3): a photo stored as the seed and fp16 coefficients of a PRANC-
reparametrized Fourier-feature MLP, with honest rate-distortion (true bits per pixel = file bytes * 8 /
pixels) against JPEG, WebP and a plainly trained fp16 INR.
"""

from reparam.image.metrics import msssim, psnr, quality

__all__ = ["msssim", "psnr", "quality"]

"""Images as sequences of patches (Dosovitskiy et al. 2021, arXiv 2010.11929, Sec. 3.1).

:class:`PatchEmbed` is the learned linear projection of flattened patches, written as a conv whose
kernel and stride are the patch size (timm's layout, so timm weights load as ``proj``).
:func:`patchify` / :func:`unpatchify` are the parameter-free reshapes MAE uses for its pixel
targets, with MAE's (p, q, c) order inside a patch so official MAE decoders stay compatible.
:func:`resample_patch_embed` fits a patch-embedding kernel to another patch size.
"""

from __future__ import annotations

from einops import rearrange
from timm.layers import resample_patch_embed as _timm_resample_patch_embed
from timm.layers import to_2tuple
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Split an image into P x P patches and project each to a token of width ``embed_dim``.

    Args:
        img_size: input size, an int for square images or (H, W).
        patch_size: P, the side of a square patch; must divide H and W.
        in_chans: input channels.
        embed_dim: token width C.

    Attributes:
        grid_size: (H / P, W / P), the patch grid.
        num_patches: N = (H / P) * (W / P).

    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={patch_size}; "
                f"pick an image size that is a multiple of {patch_size}"
            )
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """Embed the patches of a batch of images, row by row.

        Args:
            x: (B, in_chans, H, W) with (H, W) == ``img_size``.

        Returns:
            (B, N, C), tokens in row-major patch order.

        """
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                f"pass in_chans={x.shape[1] if x.dim() == 4 else '...'} to build for other channels"
            )
        size = (x.shape[2], x.shape[3])
        if size != self.img_size:
            raise ValueError(
                f"input is {size[0]}x{size[1]} but this was built for {self.img_size[0]}x{self.img_size[1]}; "
                f"pass img_size={size if size[0] != size[1] else size[0]} or resize the input"
            )
        return rearrange(self.proj(x), "b c h w -> b (h w) c")


def resample_patch_embed(weight: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Resize a patch-embedding kernel to another patch size (FlexiViT, Beyer et al. 2023, Sec. 3.4).

    FlexiViT's "PI-resize": the new kernel is the one whose token for a patch resized (bilinearly)
    from P to P' is the old kernel's token for the original patch, the least-squares solution
    through the pseudo-inverse of the resize. It is exact when the patch grows (P' >= P) and a
    least-squares fit when it shrinks. This is ``timm.layers.resample_patch_embed``, which timm's
    ViT and Swin ``checkpoint_filter_fn`` apply to a checkpoint of another patch size.

    Args:
        weight: conv kernel (C, in_chans, P, P).
        patch_size: P', or (P'h, P'w).

    Returns:
        (C, in_chans, P'h, P'w) in the dtype of ``weight``; ``weight`` itself when the size is unchanged.

    Raises:
        ValueError: ``weight`` is not a 4D conv kernel.

    """
    if weight.dim() != 4:
        raise ValueError(
            f"a patch-embedding kernel is (C, in_chans, P, P), got shape {tuple(weight.shape)}; "
            "a checkpoint that stores it as a linear layer must be converted to a conv first"
        )
    new_size = to_2tuple(patch_size)
    if tuple(weight.shape[-2:]) == new_size:
        return weight
    return _timm_resample_patch_embed(weight, list(new_size))


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened P x P patches (MAE's ``patchify``, for any channels and grid).

    Args:
        imgs: (B, C, H, W) with H and W multiples of ``patch_size``.
        patch_size: P.

    Returns:
        (B, N, P*P*C) with N = (H/P)(W/P) in row-major order; a patch is flattened as (p, q, c).

    """
    if imgs.dim() != 4 or imgs.shape[2] % patch_size or imgs.shape[3] % patch_size:
        raise ValueError(
            f"patchify needs (B, C, H, W) images with H and W multiples of patch_size={patch_size}; "
            f"got shape {tuple(imgs.shape)}"
        )
    return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(x: Tensor, patch_size: int, h: int, w: int) -> Tensor:
    """Invert :func:`patchify`.

    Args:
        x: (B, N, P*P*C) with N = h * w.
        patch_size: P.
        h: patch rows (H / P).
        w: patch columns (W / P).

    Returns:
        (B, C, h*P, w*P).

    """
    if x.dim() != 3 or x.shape[1] != h * w or x.shape[2] % (patch_size * patch_size):
        raise ValueError(
            f"unpatchify needs (B, h*w, P*P*C) = (B, {h * w}, {patch_size}*{patch_size}*C) for h={h}, w={w}, "
            f"patch_size={patch_size}; got shape {tuple(x.shape)}"
        )
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=patch_size, q=patch_size)

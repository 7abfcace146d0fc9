"""The attention ops: argument checks, implementation choice and custom_vjp around the kernels."""

from jax_flash.ops.dense import flash_attention

__all__ = ["flash_attention"]

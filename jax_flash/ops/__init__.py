"""The attention ops: argument checks, implementation choice and custom_vjp around the kernels."""

from jax_flash.ops.dense import flash_attention
from jax_flash.ops.paged import SplitPlan, choose_num_splits, choose_split_plan, paged_attention, paged_kv_update
from jax_flash.ops.segments import segment_ids_to_varlen
from jax_flash.ops.varlen import flash_attention_varlen

__all__ = ["SplitPlan", "choose_num_splits", "choose_split_plan", "flash_attention", "flash_attention_varlen",
           "paged_attention", "paged_kv_update", "segment_ids_to_varlen"]

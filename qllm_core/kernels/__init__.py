"""Kernels: Q-LLM's two-stage attention (torch and Triton), chosen per device, and RoPE."""

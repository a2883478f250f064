"""catkd-jax: Class Attention Transfer Based Knowledge Distillation (CAT-KD) in JAX/Flax."""

"""robertax: RoBERTa (Liu et al., 2019) in JAX/Flax — pretraining, fine-tuning, conversion."""

__version__ = "0.1.0"

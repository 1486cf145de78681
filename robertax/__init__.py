"""robertax: RoBERTa (Liu et al., 2019) in JAX/Flax — pretraining, fine-tuning, conversion."""

__version__ = "0.1.0"


def cache_root() -> str:
    """Where robertax caches what it builds (the built-in corpus, the MKL custom call):
    $ROBERTAX_CACHE, default ~/.cache/robertax."""
    import os  # pylint: disable=import-outside-toplevel

    return os.path.expanduser(os.environ.get("ROBERTAX_CACHE", "~/.cache/robertax"))

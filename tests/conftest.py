"""Shared test setup: 8 fake CPU devices (set before JAX is imported) and the data path."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, in the environment so that the tests'
# subprocesses share it: the suite compiles the same small steps many times (each train() call
# jits its own step). XLA's cache key holds the program, the flags and the devices; the
# directory is new each session and removed after it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    _cache = tempfile.mkdtemp(prefix="robertax-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def hf_copy(src: pathlib.Path, dst: pathlib.Path, **config) -> pathlib.Path:
    """The Hugging Face dir `src` with config.json fields changed (weights linked, not copied)."""
    import json
    dst.mkdir()
    for name in os.listdir(src):
        if name != "config.json":
            os.symlink(src / name, dst / name)
    cfg = {**json.load(open(src / "config.json")), **config}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ROBERTAX_TEST_DATA", REPO.parent / "shared" / "data"))


def _tfds_temp_dirs() -> set:
    import tempfile
    return set(pathlib.Path(tempfile.gettempdir()).glob("tmp*tfds"))


def pytest_sessionstart(session):
    session.config._tfds_temp_dirs = _tfds_temp_dirs()


def pytest_sessionfinish(session):
    """tensorflow_datasets makes an empty temp dir ("tmp...tfds") for each builder of a dataset
    that is not prepared (every `tfds.testing.mock_data` read) and never removes it: 67 a run.
    The main process (not an xdist worker) removes the empty ones made during the session."""
    if hasattr(session.config, "workerinput"):
        return
    for path in _tfds_temp_dirs() - session.config._tfds_temp_dirs:
        try:
            path.rmdir()  # only if empty
        except OSError:
            pass


@pytest.fixture(scope="session")
def test_data() -> pathlib.Path:
    path = data_dir()
    if not path.is_dir():
        pytest.fail(f"test data not found at {path}; set ROBERTAX_TEST_DATA")
    return path


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """One tiny pretraining run (built-in corpus, its 8192-token BPE) shared by every test."""
    from configs import tiny
    from robertax import train
    c = tiny.get_config()
    c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 1, 2
    c.model.intermediate_size = 64
    c.optim.total_steps, c.optim.warmup_steps = 2, 1
    c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 8, 1, 1000, 1000
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    train.train(c, workdir)
    return workdir


@pytest.fixture
def writer_closes(monkeypatch) -> list:
    """Records each `observe.MetricWriter.close()` (True: its TensorBoard writer was still
    open). A run that raises must close it itself: left to tensorboardX's atexit hook, Python
    3.12 ends the process with a traceback ("can't create new thread at interpreter shutdown")."""
    from robertax import observe
    closes, real_close = [], observe.MetricWriter.close
    monkeypatch.setattr(observe.MetricWriter, "close",
                        lambda self: (closes.append(self._tb is not None), real_close(self)))
    return closes


@pytest.fixture(scope="session")
def random_hf_roberta(test_data):
    """make(path, num_layers=2, head="mlm", labels=(), seed=0) -> path: see
    `_random_hf_roberta`."""
    return lambda path, **kw: _random_hf_roberta(path, test_data, **kw)


def _random_hf_roberta(path: pathlib.Path, test_data: pathlib.Path, num_layers: int = 2,
                       head: str | None = "mlm", labels: tuple = (), seed: int = 0
                       ) -> pathlib.Path:
    """A small random transformers RoBERTa (width 32; head "mlm": `RobertaForMaskedLM`, None:
    `RobertaModel`, "classifier": `RobertaForSequenceClassification` naming `labels` in
    id2label, one label a regression head, "qa": `RobertaForQuestionAnswering`, "choice":
    `RobertaForMultipleChoice`) over RoBERTa's real 50,265-unit BPE, its weights drawn (from
    `seed`) far from their initial values (so that texts and layers differ), saved as the Hub
    lays a model out: config.json, model.safetensors, vocab.json, merges.txt."""
    import shutil

    import torch
    import transformers
    config = transformers.RobertaConfig(
        vocab_size=50265, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    torch.manual_seed(seed)
    if head == "classifier":
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        model = transformers.RobertaForSequenceClassification(config)
    elif head == "qa":
        model = transformers.RobertaForQuestionAnswering(config)
    elif head == "choice":
        model = transformers.RobertaForMultipleChoice(config)
    elif head == "mlm":
        model = transformers.RobertaForMaskedLM(config)
    else:
        model = transformers.RobertaModel(config, add_pooling_layer=False)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "LayerNorm.weight" in name else 0.0, 0.3)
    model.save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(test_data / "bpe" / "roberta-base_hf" / name, path / name)
    return path

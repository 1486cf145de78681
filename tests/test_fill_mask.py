"""robertax.fill_mask against transformers' fill-mask pipeline, and its command line."""

import numpy as np
import pytest
import transformers
from tokenizers import AddedToken

from robertax import checkpoint, convert, fill_mask


@pytest.fixture(scope="module")
def hf_dir(random_hf_roberta, tmp_path_factory):
    return random_hf_roberta(tmp_path_factory.mktemp("hf"))


TEXTS = ["The capital of France is <mask>.", "<mask> is a word at the start",
         "Hello,<mask> world!"]


def test_guesses_equal_transformers_pipeline(hf_dir):
    """Same top tokens in the same order, the same probabilities, token strings and filled-in
    texts as `pipeline("fill-mask")` on the same checkpoint and tokenizer."""
    # roberta-base's published tokenizer.json gives <mask> lstrip (it takes the space before
    # it); built from vocab.json + merges.txt alone, transformers' tokenizer would not
    hf_tok = transformers.RobertaTokenizer(
        vocab=str(hf_dir / "vocab.json"), merges=str(hf_dir / "merges.txt"),
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, special=True))
    pipe = transformers.pipeline(
        "fill-mask", model=transformers.RobertaForMaskedLM.from_pretrained(hf_dir).eval(),
        tokenizer=hf_tok, device="cpu")
    filler = fill_mask.FillMask(str(hf_dir))
    for text in TEXTS:
        want = pipe(text, top_k=5)
        got = filler.fill(text, topk=5)
        assert [r["token"] for r in got] == [r["token"] for r in want], text
        assert [r["token_str"] for r in got] == [r["token_str"] for r in want], text
        assert [r["sequence"] for r in got] == [r["sequence"] for r in want], text
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want],
                                   rtol=1e-4)
        scores = [r["score"] for r in got]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def test_one_mask_per_text_and_clear_errors(hf_dir, tmp_path):
    filler = fill_mask.FillMask(str(hf_dir))
    with pytest.raises(ValueError, match=r"exactly one <mask>, found 0"):
        filler.fill("no mask here")
    with pytest.raises(ValueError, match=r"exactly one <mask>, found 2"):
        filler.fill("<mask> and <mask>")
    with pytest.raises(ValueError, match=r"more than the model's 64"):
        filler.fill("word " * 70 + "<mask>")
    with pytest.raises(ValueError, match="topk must be at least 1"):
        filler.fill("a <mask>", topk=0)
    # a fine-tuned model (no MLM head) says so
    cfg, params = convert.from_hf(str(hf_dir))
    checkpoint.save_model(str(tmp_path / "classifier"), cfg, {"encoder": params["encoder"]})
    with pytest.raises(SystemExit, match=r"error: .*classifier: no masked-LM head"):
        fill_mask.main(["--model", str(tmp_path / "classifier"), "a <mask>"])
    with pytest.raises(SystemExit, match=r"error: .*nowhere does not exist"):
        fill_mask.main(["--model", str(tmp_path / "nowhere"), "a <mask>"])


def test_command_line_on_a_pretraining_workdir(pretrained, capsys):
    """A pretraining run's workdir (its latest checkpoint, its corpus's tokenizer), as a user
    would look at what it learned."""
    fill_mask.main(["--model", pretrained, "--topk=3", "Return the <mask> of the list."])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Return the <mask> of the list." and len(out) == 4, out
    scores = [float(line.split()[0]) for line in out[1:]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    for line in out[1:]:
        assert line.rstrip().startswith("  ") and "Return the" in line and "of the list." in line


def test_a_fairseq_checkpoint_with_a_tokenizer_named(hf_dir, tmp_path):
    """fairseq's model.pt (written here from the same weights): the same guesses, with the
    tokenizer given (this one was written without GPT-2's encoder.json and vocab.bpe)."""
    cfg, params = convert.from_hf(str(hf_dir))
    convert.write(cfg, params, str(tmp_path / "fs"), "fairseq")
    with pytest.raises(SystemExit, match=r"error: .*fs: no tokenizer found"):
        fill_mask.main(["--model", str(tmp_path / "fs"), "a <mask>"])
    text = TEXTS[0]
    got = fill_mask.fill_mask(str(tmp_path / "fs" / "model.pt"), text, tokenizer=str(hf_dir))
    want = fill_mask.fill_mask(str(hf_dir), text)
    assert [r["token"] for r in got] == [r["token"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-6)

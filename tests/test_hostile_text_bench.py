"""Hostile and mistaken input to the text pipeline, the network building blocks and the
benchmarks: each is refused with one clear error (one ``qlatent: error:`` line and exit code 2
on the command line), before anything is allocated or timed."""

from __future__ import annotations

import math

import pytest
import torch

from cli_helpers import one_line_error, run_cli
from qlatent.bottlenecks import build
from qlatent.data.sources import ChecksumError
from qlatent.data.text import SPLIT_SIZES, Vocabulary
from qlatent.models.text import TextAutoencoder
from qlatent.nn import Bernoulli, GatedDense, SquaredError, gated_mlp, relu_mlp
from qlatent.nn.conv import ResidualLayer, conv_decoder, conv_encoder
from qlatent.nn.text import Categorical, TextModelConfig

CORPUS = [["a", "b", "c"], ["a", "d"]]
TINY = dict(vocab_size=10, max_tokens=5, embed=4, encoder_hidden=4, code_dim=3, decoder_hidden=4)


# ------------------------------------------------------------------------------ vocabulary
@pytest.mark.parametrize("size", [-1, 1.5, True, "3"])
def test_vocabulary_size_is_a_count(size):
    """``size = -1`` kept every word but the least frequent, without a word."""
    with pytest.raises(ValueError, match="size must be a non-negative integer"):
        Vocabulary.build(CORPUS, size)


@pytest.mark.parametrize("words", [[0, 1], "abc", [""], ["a b"], ["a\n"], None, {"a": 1}])
def test_saved_vocabulary_words_are_checked(words):
    """A checkpoint's vocabulary of numbers, letters of a string or empty words was taken."""
    with pytest.raises(ValueError, match="vocabulary word"):
        Vocabulary(words)


def test_encode_checks_max_tokens_and_sentences():
    vocab = Vocabulary(["a", "b"])
    for max_tokens in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens must be a non-negative integer"):
            vocab.encode([], max_tokens)  # (0, 0) ids before
    with pytest.raises(TypeError, match="sentence 0 is a str"):
        vocab.encode(["a b"], 3)  # a line, not a token list: read letter by letter


@pytest.mark.parametrize("ids", [[4, 6], [-1, 4], [4.0], torch.tensor([[4, 5]])])
def test_decode_refuses_ids_outside_the_vocabulary(ids):
    """An id past the vocabulary was an IndexError, a negative one skipped without a word."""
    with pytest.raises(ValueError, match="not a word id of this vocabulary"):
        Vocabulary(["a", "b"]).decode(ids)


def test_a_huge_split_file_is_refused_before_it_is_hashed(tmp_path, monkeypatch):
    from qlatent.data import text

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "qlatent" / "text-en"
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (folder / f"{split}.txt").write_text("a b c\n")
    with open(folder / "train.txt", "r+b") as fh:  # sparse: no disk used
        fh.truncate(text.MAX_BYTES_PER_TOKEN * SPLIT_SIZES["train"][1] + 1)
    with pytest.raises(ChecksumError, match="bytes, more than its 3,078,256 tokens"):
        text.build(download=False)


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    """A sentence model's checkpoint, trained for one update."""
    from qlatent.cli import main

    tmp_path = tmp_path_factory.mktemp("text")
    config = tmp_path / "text.toml"
    config.write_text(
        f'out_dir = "{tmp_path / "run"}"\n'
        '[data]\nname = "synthetic-text"\nsynthetic_size = 36\nmax_tokens = 8\n'
        '[model]\nfamily = "text_gru"\nhidden = [4, 4]\nembed = 4\nlatent_dim = 2\n'
        '[bottleneck]\nname = "identity"\n'
        "[train]\nmax_steps = 1\nbatch_size = 8\nprogress = false\n"
    )
    assert main(["train", str(config)]) == 0
    return tmp_path / "run" / "last.pt"


def _forged_vocabulary(checkpoint, tmp_path, vocabulary) -> str:
    """A copy of ``checkpoint`` whose saved vocabulary is ``vocabulary`` (``...``: none)."""
    from qlatent.train.checkpoint import DIGEST_KEY, load, save_atomic

    ckpt = load(checkpoint)
    ckpt.pop(DIGEST_KEY, None)
    derived = ckpt["run_config"]["derived"]
    if vocabulary is ...:
        del derived["vocabulary"]
    else:
        derived["vocabulary"] = vocabulary(derived["vocabulary"])
    save_atomic(ckpt, tmp_path / "forged.pt")
    return tmp_path / "forged.pt"


def test_eval_refuses_a_checkpoint_whose_vocabulary_is_not_words(text_checkpoint, tmp_path, capsys):
    """A checkpoint's saved vocabulary of numbers was evaluated as if every word were unknown."""
    forged = _forged_vocabulary(text_checkpoint, tmp_path, lambda words: list(range(len(words))))
    code, err = run_cli(["eval", forged], capsys)
    assert code == 2 and one_line_error(err) and "vocabulary word 0 is 0" in err


@pytest.mark.parametrize(
    ("vocabulary", "message"),
    [(lambda words: [], "got an empty list"), (..., "got none"), (lambda words: 5, "got a int")],
)
def test_eval_refuses_a_sentence_model_without_its_vocabulary(
    text_checkpoint, tmp_path, capsys, vocabulary, message
):
    """An empty saved vocabulary fell back to data.vocab_size and was evaluated with no words;
    a missing one read the test sentences as images ("expected (B, T) int64 token ids, got
    (10, 784) torch.float32")."""
    forged = _forged_vocabulary(text_checkpoint, tmp_path, vocabulary)
    code, err = run_cli(["eval", forged], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"a sentence model needs its saved vocabulary, a list of words; {message}" in err


# ------------------------------------------------------------------------ text autoencoder
@pytest.mark.parametrize(
    "field, value",
    [
        ("embed", 0),
        ("vocab_size", -10),
        ("code_dim", 2.5),
        ("encoder_hidden", True),
        ("decoder_layers", "2"),
    ],  # fmt: skip
)
def test_text_config_values_are_checked(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        TextModelConfig(**{**TINY, field: value})


def test_text_autoencoder_checks_its_parts_and_counts_its_size():
    cfg = TextModelConfig(**TINY)
    with pytest.raises(TypeError, match="bottleneck must be a Bottleneck"):
        TextAutoencoder(torch.nn.Linear(3, 3), cfg)
    with pytest.raises(TypeError, match="cfg must be a TextModelConfig"):
        TextAutoencoder(build("identity", dim=3), dict(TINY))
    with pytest.raises(ValueError, match="cfg.code_dim is 3"):  # failed at the first batch
        TextAutoencoder(build("identity", dim=5), cfg)
    with pytest.raises(ValueError, match="the text autoencoder would hold"):  # not allocated
        TextAutoencoder(build("identity", dim=3), TextModelConfig(**{**TINY, "vocab_size": 2**40}))


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.tensor([[40, 2]]), r"token ids must lie in \[0, 14\)"),
        (torch.tensor([[-1, 2]]), r"token ids must lie in \[0, 14\)"),
        (torch.zeros(2, 0, dtype=torch.int64), "T >= 1"),
        (torch.tensor([[0, 0, 4, 2]]), "padding"),  # left-padded: the wrong tokens were packed
    ],
)
def test_token_ids_are_checked(x, message):
    model = TextAutoencoder(build("identity", dim=3), TextModelConfig(**TINY))
    with pytest.raises(ValueError, match=message):
        model(x)
    with pytest.raises(ValueError, match=message):
        model.greedy(x)


def test_categorical_checks_its_targets():
    logits = torch.zeros(1, 1, 10)
    for x in (torch.tensor([[10]]), torch.tensor([[-3]])):
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
            Categorical().nll(x, logits)
    with pytest.raises(ValueError, match="int64"):
        Categorical().nll(torch.tensor([[1.0]]), logits)


def test_an_empty_batch_of_sentences():
    model = TextAutoencoder(build("identity", dim=3), TextModelConfig(**TINY))
    x = torch.zeros(0, 4, dtype=torch.int64)
    out = model(x)
    assert out.params.shape == (0, 4, 14) and model.likelihood.nll(x, out.params).shape == (0,)
    assert model.greedy(x).shape == (0, 4)


# ---------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize(
    "make",
    [
        lambda: gated_mlp([4, 2.5, 3]),
        lambda: gated_mlp([4, "3", 3]),
        lambda: gated_mlp([4, True, 3]),
        lambda: gated_mlp(None),
        lambda: relu_mlp([4, True, 3]),
        lambda: conv_encoder(1, [True], 2),
        lambda: conv_encoder(1, [4], 2, num_residual=True),  # one residual layer before
        lambda: GatedDense(0, 3),  # zero-width layers were built
        lambda: GatedDense(-1, 3),
        lambda: ResidualLayer(0),
    ],
)
def test_block_widths_are_positive_integers(make):
    with pytest.raises(ValueError, match="must be"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: gated_mlp([10**6, 10**6]),
        lambda: relu_mlp([10**6, 10**6]),
        lambda: conv_encoder(1, [10**6], 2),
        lambda: conv_decoder(2, [10**6], 1),
    ],
)
def test_block_sizes_are_counted_before_allocation(make):
    """Terabytes asked of the allocator before (a RuntimeError, or a machine swapping)."""
    with pytest.raises(ValueError, match="would hold 1?[0-9,]+ numbers"):
        make()


@pytest.mark.parametrize("x", [2.0, -1.0, math.nan])
def test_bernoulli_data_lie_in_the_unit_interval(x):
    """Data of 2 gave a negative "negative log-likelihood" without a word."""
    with pytest.raises(ValueError, match=r"Bernoulli data must lie in \[0, 1\]"):
        Bernoulli().nll(torch.tensor([[0.5, x]]), torch.zeros(1, 2))


def test_bernoulli_data_are_floating_point():
    with pytest.raises(ValueError, match="floating-point"):
        Bernoulli().nll(torch.tensor([[1]]), torch.zeros(1, 1))


@pytest.mark.parametrize("likelihood", [Bernoulli(), SquaredError()])
def test_likelihoods_of_an_empty_batch(likelihood):
    assert likelihood.nll(torch.zeros(0, 3), torch.zeros(0, 3)).shape == (0,)
    with pytest.raises(ValueError, match="batch axis"):
        likelihood.nll(torch.tensor(0.5), torch.tensor(0.0))


@pytest.mark.parametrize("variance", [math.inf, 1e-320, 1e300, True, "1", None])
def test_squared_error_variance_is_a_usable_number(variance):
    """An infinite variance made every loss 0, a subnormal one every loss infinite."""
    with pytest.raises(ValueError, match="variance must be a number"):
        SquaredError(variance=variance)


# ------------------------------------------------------------------------------ benchmarks
def _never(*args, **kwargs):
    raise AssertionError("the benchmark ran")


BENCHES = {
    "coding": "qlatent.bench.coding.bench_coding",
    "lattices": "qlatent.bench.geometry.bench_lattices",
    "quantizers": "qlatent.bench.bench_quantizers",
    "lattice": "qlatent.bench.bench_lattice",
}


@pytest.mark.parametrize("command", list(BENCHES))
@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_bench_output_is_checked_before_the_benchmark_runs(tmp_path, monkeypatch, capsys,
                                                           command, where):  # fmt: skip
    """A folder or a path under a file was refused only after minutes of timing."""
    monkeypatch.setattr(BENCHES[command], _never)
    (tmp_path / "file").write_text("x")
    output = tmp_path if where == "folder" else tmp_path / "file" / "out.json"
    code, err = run_cli(["bench", command, "--output", output], capsys)
    assert code == 2 and one_line_error(err)


def test_bench_scaling_output_is_checked_before_it_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("qlatent.bench.lattice.bench_lattice_scaling", _never)
    code, err = run_cli(["bench", "lattice", "--scaling", "--output", tmp_path], capsys)
    assert code == 2 and one_line_error(err)


def test_bench_output_expands_the_home_folder(tmp_path, monkeypatch, capsys):
    """``--output=~/r.json`` (not expanded by the shell) wrote ``./~/r.json``."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setattr("qlatent.bench.coding.bench_coding", lambda **kw: {"cases": {}})
    monkeypatch.setattr("qlatent.bench.coding.format_coding", lambda result: "")
    code, _ = run_cli(["bench", "coding", "--output=~/r.json"], capsys)
    assert code == 0 and (home / "r.json").is_file() and not (work / "~").exists()


@pytest.mark.parametrize(
    "args, target",
    [
        (["lattice", "--scaling", "--rows", "1024"], "qlatent.bench.lattice.bench_lattice_scaling"),
        (["lattice", "--scaling", "--no-compile"], "qlatent.bench.lattice.bench_lattice_scaling"),
        (["quantizers", "--quick", "--rows", "64"], "qlatent.bench.bench_quantizers"),
        (["quantizers", "--quick", "--budget", "5"], "qlatent.bench.bench_quantizers"),
    ],
)
def test_bench_options_that_would_be_ignored_are_refused(monkeypatch, capsys, args, target):
    """``--scaling`` times fixed shapes and ``--quick`` fixed sizes: the options were dropped."""
    monkeypatch.setattr(target, _never)
    code, err = run_cli(["bench", *args, "--output", ""], capsys)
    assert code == 2 and one_line_error(err) and args[2] in err


def test_bench_names_given_twice_are_refused():
    """``--names vq,vq`` listed every vq row twice with one timing."""
    from qlatent.bench import bench_quantizers
    from qlatent.bench.geometry import bench_lattices

    with pytest.raises(ValueError, match=r"more than once: \['vq'\]"):
        bench_quantizers(names=["vq", "vq"], rows=8, repeats=1, min_repeats=1, budget_s=0.0,
                         compile=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"more than once: \['z'\]"):
        bench_lattices(names=["z", "z"], rows=8, repeats=1, target_rse=0.5, steps=False,
                       compile=False)  # fmt: skip


def test_bench_sizes_are_checked_by_the_python_api():
    """0 rows gave 0 rows/s, 0 threads a RuntimeError, a target of 0 sampling to the cap."""
    from qlatent.bench import bench_lattice
    from qlatent.bench.coding import bench_coding
    from qlatent.bench.geometry import bench_lattices

    with pytest.raises(ValueError, match="rows must be a positive integer"):
        bench_lattice(rows=0, dim=8, repeats=1, compile=False, peers=False)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        bench_coding(rows=8, dim=8, repeats=1, threads=0)
    with pytest.raises(ValueError, match="target_rse"):
        bench_lattices(names=["z"], rows=8, repeats=1, target_rse=0.0, steps=False, compile=False)


def test_a_cuda_device_past_the_last_is_refused(monkeypatch):
    """``--device cuda:3`` on a machine with one GPU ended in a traceback at the first tensor."""
    from qlatent.bench.timing import resolve_bench_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_bench_device("cuda:3")

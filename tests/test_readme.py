"""The README's Python snippets run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show at least one Python snippet"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_quick_start_is_the_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make \w+", quick, flags=re.M)
    assert commands == ["make demo", "make test"]


def test_readme_config_is_the_example_file_and_valid():
    """The "Train your own" TOML block is ``examples/folder-vq.toml`` (comments aside) and loads."""
    import tomllib

    from qlatent.experiments.custom import load_config

    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    example = README.parent / "examples" / "folder-vq.toml"
    assert blocks and tomllib.loads(blocks[0]) == tomllib.loads(example.read_text())
    cfg = load_config(example)
    assert (cfg.bottleneck.name, cfg.model.family, cfg.data.name) == ("vq", "conv", "folder")


def test_readme_lists_every_registered_bottleneck():
    """The sentence after ``BOTTLENECKS.names()`` names exactly what is registered (it had left
    out ``vector_st``)."""
    from qlatent.bottlenecks import BOTTLENECKS

    text = " ".join(README.read_text().split())
    listed = text.split("`qlatent.bottlenecks.BOTTLENECKS.names()` lists what is registered (", 1)
    names = re.findall(r"`(\w+)`", listed[1].split(")", 1)[0])
    assert sorted(names) == sorted(BOTTLENECKS.names())

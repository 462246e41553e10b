"""README.md's measured figures come from the commands it names.

Each generated region of README.md must be what benchmarks/readme_figures.py
renders from the committed JSON under benchmarks/results/ (nothing is measured
here), must name the commands and the machine of its figures, and each JSON file
must record the options of the command named for it. Outside the regions and the
code blocks, the README holds no measured figure.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from lrfast import run_record
from lrfast.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figures = load_script("readme_figures")
RESULTS = figures.load()
TEXT = figures.README.read_text()

# A time, a bandwidth, a ratio or a percentage.
FIGURE = re.compile(r"\d(?:[\d.,]*\d)?\s?(?:ms|µs|us|ns|GB/s|x|%)(?!\w)")
# Numbers outside the regions that are rules or arithmetic, not measurements.
NOT_MEASURED = [
    "exceeds 4x its",  # the range test's stopping rule
    "steps to 95% accuracy",  # the demo's target
    "a rate 3-10x smaller than AdamW's",  # Lion's authors' advice
    "59 % in 8 bits, 8 % in 4",  # 0.01 / (1 - 0.99 m), worked out in the sentence
]


def test_the_readme_is_the_rendering_of_the_committed_json():
    assert figures.render(TEXT, RESULTS) == TEXT, "run: python benchmarks/readme_figures.py"


@pytest.mark.parametrize("region", sorted(figures.REGIONS))
def test_each_region_names_its_commands_and_machine(region):
    text = figures.regions(TEXT)[region]
    for source in figures.REGIONS[region][1]:
        info = RESULTS[source]["machine"]
        assert f"`{figures.SOURCES[source]}`" in text
        assert info["cpu"] in text and info["date"] in text and f"{info['isa']} kernels" in text


@pytest.mark.parametrize("source", sorted(figures.SOURCES))
def test_each_json_file_records_the_options_of_its_command(source, monkeypatch):
    monkeypatch.chdir(ROOT)  # --json paths are checked relative to the repository root
    program, *args = shlex.split(figures.SOURCES[source])
    if program == "lrfast":
        parser = build_parser()
    else:
        pytest.importorskip("torch")  # the scripts compare against it
        parser = load_script(Path(args.pop(0)).stem).build_parser()
    assert RESULTS[source]["options"] == run_record.options(parser.parse_args(args))
    assert RESULTS[source]["options"]["json"] == f"{figures.RESULTS}/{source}"


def scaled(value):
    """`value` with every number in it changed (machine and options aside)."""
    if isinstance(value, dict):
        return {k: v if k in ("machine", "options") else scaled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scaled(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value * 3 if isinstance(value, int) else value * 1.5
    return value


@pytest.mark.parametrize("region", sorted(figures.REGIONS))
def test_each_region_changes_with_its_json(region):
    results = copy.deepcopy(RESULTS)
    for source in figures.REGIONS[region][1]:
        results[source] = scaled(results[source])
    assert figures.regions(figures.render(TEXT, results))[region] != figures.regions(TEXT)[region]


def test_the_renderer_refuses_a_readme_without_its_regions():
    with pytest.raises(ValueError, match="regions"):
        figures.render(TEXT.replace("<!-- figures:how-fast -->", "<!-- how-fast -->"), RESULTS)


def test_no_measured_figure_outside_the_regions():
    text = figures.REGION.sub("", TEXT)
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    for phrase in NOT_MEASURED:
        assert phrase in text, f"update NOT_MEASURED: {phrase!r} is gone"
        text = text.replace(phrase, "")
    assert FIGURE.findall(text) == []


def test_check_mode_says_whether_the_readme_is_current(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(TEXT)
    monkeypatch.setattr(figures, "README", readme)
    monkeypatch.setattr(sys, "argv", ["readme_figures.py", "--check"])
    assert figures.main() == 0
    readme.write_text(TEXT.replace("<!-- figures:numerics -->\n", "<!-- figures:numerics -->\nstale\n"))
    assert figures.main() == 1

"""`lrfast bench` on tiny sizes: it runs, prints its table and writes sane JSON."""

import json

import pytest

from lrfast import bench
from lrfast.cli import main


def test_bench_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "1000,17", "--optimizers", "adam,sgd", "--no-lists",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "% of bw" in printed and "adam" in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["optimizer"], r["layout"]) for r in rows] == [
        ("adam", "1x1000"), ("sgd", "1x1000"), ("adam", "1x17"), ("sgd", "1x17")]
    for r in rows:
        assert r["time_s"] > 0 and r["gbytes_s"] > 0 and r["bandwidth_gbs"] > 0
        assert r["vs_reference"] > 0
        assert (r["vs_torch"] is None) == (not bench.torch_available())
    adam = rows[0]
    assert adam["gbytes_s"] == pytest.approx(28 * 1000 / adam["time_s"] / 1e9)
    assert result["machine"]["isa"] in ("baseline", "avx2", "avx512")


def test_bench_lists_and_clip_row(capsys):
    assert main(["bench", "--sizes", "", "--optimizers", "adamw", "--no-reference",
                 "--no-torch"]) == 0
    printed = capsys.readouterr().out
    for layout in ("1000x1000", "transformer-146", "clip+adamw"):
        assert layout in printed


def test_bench_refuses_unknown_optimizers(capsys):
    assert main(["bench", "--optimizers", "adam,lion"]) == 2
    assert "unknown optimizers ['lion']" in capsys.readouterr().err


def test_bench_cuda_without_gpu_says_so(capsys, monkeypatch):
    cuda = pytest.importorskip("numba.cuda")
    monkeypatch.setattr(cuda, "is_available", lambda: False)  # as on a machine without a GPU
    assert main(["bench", "--device", "cuda", "--sizes", "1000"]) == 1
    assert "--device cuda found no usable CUDA GPU" in capsys.readouterr().err

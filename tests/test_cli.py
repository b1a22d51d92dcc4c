"""python -m nin_ext {shapes, info, bench}."""
import json

from conftest import NOTEBOOK_SHAPE_LINES, run_python


def _ok(r):
    assert r.returncode == 0, f"rc={r.returncode}\nSTDOUT:\n{r.stdout}\nSTDERR:\n{r.stderr}"
    return r


def test_shapes_matches_notebook():
    r = _ok(run_python(["-m", "nin_ext", "shapes"]))
    lines = [l.rstrip("\r") for l in r.stdout.strip("\n").splitlines()]
    assert lines == NOTEBOOK_SHAPE_LINES, "\n".join(lines)


def test_info_runs_and_mentions_cpu():
    r = _ok(run_python(["-m", "nin_ext", "info"]))
    assert "cpu" in r.stdout.lower(), r.stdout


def test_info_json():
    r = _ok(run_python(["-m", "nin_ext", "info", "--json"]))
    info = json.loads(r.stdout)
    assert "backends" in info and "reference" in info["backends"]
    assert "torch" in info and "nin_ext" in info


def test_help():
    r = _ok(run_python(["-m", "nin_ext", "--help"]))
    for sub in ("bench", "shapes", "info"):
        assert sub in r.stdout


def test_bench_writes_json(tmp_path):
    out = tmp_path / "out.json"
    r = _ok(run_python(["-m", "nin_ext", "bench", "--batch", "1", "--repeat", "1", "--warmup", "1",
                        "--no-compile", "--tf32", "off", "--peak-gflops", "100", "--json", str(out)],
                       cwd=tmp_path, timeout=600))
    assert out.exists(), r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert data["config"]["batch"] == 1 and data["config"]["compile"] is False
    # each stage's work as direct convolution: block 2 is 96 -> 256 channels by 5x5 on 26x26, then
    # two 256 -> 256 1x1 convs; the pools have none
    block2 = 2 * 26 * 26 * 256 * (96 * 25 + 2 * 256)
    assert abs(data["stages"]["block2"]["gflop"] - block2 * 1e-9) < 1e-9
    assert data["stages"]["pool2"]["gflop"] == 0
    assert data["config"]["peak_gflops"] == 100 and "of peak" in r.stdout and "GFLOP/s" in r.stdout
    e2e = data["stages"]["end-to-end"]
    for col in ("eager", "nin_ext"):
        assert e2e[col]["error"] is None, e2e[col]["error"]
        assert len(e2e[col]["samples_ms"]) == 1
    # the nin_ext model's output is checked against the float64 reference by the bench itself (in
    # exact fp32: --tf32 off, which only matters on a GPU)
    assert e2e["nin_ext"]["rel_err"] <= 1e-5, e2e["nin_ext"]["rel_err"]


def test_bench_rgb_network(tmp_path):
    """--in-channels 3: an RGB NiN (its block 1 takes the CPU backend's polyphase form)."""
    out = tmp_path / "out.json"
    r = _ok(run_python(["-m", "nin_ext", "bench", "--batch", "2", "--repeat", "1", "--warmup", "1", "--no-compile",
                        "--no-stages", "--in-channels", "3", "--tf32", "off", "--json", str(out)],
                        cwd=tmp_path, timeout=600))
    assert "NiN forward 3x224x224" in r.stdout
    data = json.loads(out.read_text())
    assert data["config"]["in_channels"] == 3
    e2e = data["stages"]["end-to-end"]
    assert e2e["nin_ext"]["error"] is None, e2e["nin_ext"]["error"]
    assert e2e["nin_ext"]["rel_err"] <= 1e-5, e2e["nin_ext"]["rel_err"]

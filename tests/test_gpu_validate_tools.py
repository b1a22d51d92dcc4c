"""The GPU validation tools run here without a GPU: the script parses, and the report writer turns a
synthetic run (steps, logs, junit xml, a bench table) into report.md and report.json."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_validate.sh")
LEASE_SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_lease.sh")
REPORT = os.path.join(ROOT, "benchmarks", "gpu_report.py")


@pytest.mark.parametrize("script", [SCRIPT, LEASE_SCRIPT], ids=os.path.basename)
def test_gpu_scripts_parse(script):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    result = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_gpu_report_from_a_synthetic_run(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "steps.tsv").write_text(
        "name\trc\tseconds\tlimit_s\tstatus\tcommand\n"
        "environment\t0\t1\t60\tok\tnvidia-smi\n"
        "pytest\t1\t50\t480\tfailed\tpython -m pytest\n"
        "memcheck\t0\t30\t200\tok\tcompute-sanitizer\n"
        "bench-b1-bf16\t124\t90\t90\ttimed out\tpython -m nin_ext bench\n")
    (logs / "environment.out").write_text("NVIDIA H100 80GB HBM3\ntorch 2.11.0+cu130\n")
    (logs / "pytest.out").write_text("1 failed, 2 passed, 1 skipped in 3.00s\n")
    (logs / "memcheck.out").write_text("ok\n========= ERROR SUMMARY: 0 errors\n")
    (logs / "bench-b1-bf16.err").write_text("Traceback ...\nRuntimeError: boom\n")
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1" time="3.0">'
        '<testcase classname="tests.test_x" name="test_a"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_x" name="test_b"/></testsuite></testsuites>')
    result = subprocess.run([sys.executable, REPORT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    md = (tmp_path / "report.md").read_text()
    assert "| pytest | failed | 1 |" in md
    assert "4 tests, 1 failures, 0 errors, 1 skipped" in md
    assert "FAILED tests.test_x::test_a" in md
    assert "memcheck: ok (rc 0): ========= ERROR SUMMARY: 0 errors" in md
    assert "### bench-b1-bf16: timed out" in md and "RuntimeError: boom" in md
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pytest"]["failures"] == 1
    assert report["benchmarks"]["bench-b1-bf16"]["status"] == "timed out"
    assert "H100" in report["environment"]

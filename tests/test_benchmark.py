"""benchmarks/inference.py end to end at a tiny size: both variants run in their own processes, the
results are written, and the optimised outputs equal the naive ones (float32 on this CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _translate_utils import small_model  # noqa: F401  (a fixture)
from conftest import ROOT


def test_benchmark_script_runs_and_variants_agree(tmp_path):
    md = tmp_path / "RESULTS.md"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("MRTRANSLATE_TEST_THREADS", "2"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--sizes", "16x32x16", "--steps", "2",
         "--targets", "2", "--repeats", "2", "--markdown", str(md)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(md.with_suffix(".json").read_text())[-1]
    variants = {r["variant"]: r for r in record["results"]}
    assert set(variants) == {"naive", "optimised"}
    for r in variants.values():
        assert r["repeats"] == 2 and len(r["wall_s_all"]) == 2
        assert r["wall_s"] > 0 and r["peak_bytes"] > 0 and r["precision"] == "float32"
    assert variants["optimised"]["unet_s_per_step"] > 0
    # same weights, same per-target noise: float32 paths agree to rounding
    assert record["agreement"]["16x32x16 optimised"]["rel_l2"] < 1e-4
    text = md.read_text()
    assert "**optimised / naive**" in text and "relative L2" in text
    assert record["flops"]["16x32x16"]["unet_step_gflop"] > 0


def test_benchmark_against_the_authors_code_runs_their_modules_and_agrees(tmp_path):
    """benchmarks/vs_official.py imports the authors' modules from their sources, runs them and mrtranslate on
    the same weights, input and noise, and both produce the same translations."""
    from conftest import SHARED, require_reference

    official = require_reference(SHARED / "reference" / "aldm-official")
    md = tmp_path / "VS.md"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("MRTRANSLATE_TEST_THREADS", "2"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "vs_official.py"), "--official-src", str(official),
         "--sizes", "16x32x16", "--steps", "2", "--targets", "2", "--repeats", "1", "--markdown", str(md),
         "--solver", "dpm++2m", "--solver-steps", "3", "--extrapolate-steps", "200", "--cold", "2"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(md.with_suffix(".json").read_text())[-1]
    rows = {(r["impl"], r["solver"]): r for r in record["results"] if r["kind"] == "warm"}
    assert set(rows) == {("authors", "ddim"), ("mrtranslate", "ddim"), ("mrtranslate", "dpm++2m")}
    cold = {(r["impl"], r["solver"]): r for r in record["results"] if r["kind"] == "cold"}
    assert set(cold) == set(rows)
    for r in cold.values():  # each cold run is its own process: the process outlasts its translation
        assert len(r["wall_s_all"]) == 2 and all(p > w > 0 for p, w in zip(r["process_s_all"], r["wall_s_all"]))
    assert rows[("authors", "ddim")]["unet_calls"] == 2 * 2  # one target at a time
    assert rows[("mrtranslate", "ddim")]["unet_calls"] == 2  # both targets in one batch
    assert rows[("mrtranslate", "dpm++2m")]["unet_calls"] == 3
    assert record["agreement"]["16x32x16"]["rel_l2"] < 1e-4
    text = md.read_text()
    assert "| 16x32x16 | authors | ddim 2 |" in text and "extrapolated" in text
    assert "warm" in text and "Cold: 2 fresh process(es)" in text


def test_main_job_profile_splits_a_cold_run_into_its_stages(tmp_path, small_model):
    """benchmarks/main_job.py runs the command in fresh processes and splits each run's wall time into stages
    that add up to it, each stage with its own share (sampling where the UNet runs, write where files go)."""
    from _translate_utils import write_head

    scan = write_head(tmp_path / "sub_t1.nii.gz")
    out = tmp_path / "profile.json"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("MRTRANSLATE_TEST_THREADS", "2"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "main_job.py"), str(scan), "--to", "t2", "flair", "--runs", "2",
         "--json", str(out), "--", "--model", str(small_model), "--samples", "2"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["command"] == "mrtranslate sub_t1.nii.gz --to t2 flair --model " + str(small_model) + " --samples 2"
    assert len(record["runs"]) == 2
    for run in record["runs"]:
        stages = run["stages_s"]
        assert abs(sum(stages.values()) - run["wall_s"]) < 1e-6
        assert all(stages[s] > 0 for s in ("start", "load model", "encode", "MS-SPADE", "sampling", "decode", "write"))
        assert stages["other"] > -0.05  # nested stages are not counted twice
        assert run["peak_gb"] > 0.05
    assert "| sampling |" in proc.stdout and "cold run(s), each in a fresh process" in proc.stdout
    assert not any(tmp_path.glob("sub_t1_*.nii.gz"))  # outputs go to a temporary folder, not beside the input

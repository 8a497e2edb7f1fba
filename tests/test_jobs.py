"""The main job as a user runs it: `python jobs/adapt.py ...` (subprocesses, real Ray)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.ray  # every test here starts a Ray cluster or a job subprocess


def run_job(*args, cwd=REPO, timeout=600, env=None):
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environment.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "jobs" / "adapt.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=environment)


@pytest.mark.parametrize("args,message", [
    (["--train.lrr", "1e-5"], "error: unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["--train.lr", "-1"], "error: train.lr must be > 0, got -1.0"),
    (["--data.path", "/nonexistent/corpus.jsonl"], "error: data.path does not exist: /nonexistent/corpus.jsonl"),
    (["--model", "/nonexistent/model"], "error: model path does not exist: /nonexistent/model"),
    (["--config", "/nonexistent.yaml"], "error: config file not found: /nonexistent.yaml"),
    (["--objective.name=sft"], "error: objective.name: unknown objective 'sft'"),
])
def test_invalid_config_fails_fast_with_one_line(args, message):
    result = run_job(*args, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_print_config_resolves_yaml_and_overrides():
    result = run_job("--config", "configs/cpu.yaml", "--train.lr=3e-5", "--print-config", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lr: 3.0e-05" in result.stdout and "name_or_path: smollm2-135m-instruct" in result.stdout


def bioasq_corpus(tmp_path, n, bioasq_passages):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"meta": {"context": text}}) + "\n" for text in bioasq_passages[:n]))
    return path


def test_driver_restart_with_the_same_run_name_continues_from_the_last_checkpoint(tmp_path, tiny_model_dir, bioasq_passages):
    import signal
    import time

    corpus = bioasq_corpus(tmp_path, 40, bioasq_passages)
    args = [str(REPO / "jobs" / "adapt.py"), "--model", str(tiny_model_dir), "--data.path", str(corpus),
            "--data.text_field", "meta.context", "--run.name", "restart", "--run.storage_path", str(tmp_path / "runs"),
            "--run.checkpoint_every_n_steps", "3", "--train.lr", "1e-3"]
    run_dir = tmp_path / "runs" / "restart"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # first driver: killed (with the local Ray cluster it started) once a checkpoint is registered
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (snapshot.exists() and "checkpoint_0000" in snapshot.read_text()):
        assert first.poll() is None, "the first driver ended before writing a checkpoint"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (run_dir / "model").exists()

    second = run_job(*args[1:])
    assert second.returncode == 0, second.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21)), steps  # 40 documents / 2 workers: 20 steps, each exactly once
    state = json.loads((run_dir / "model" / "run.json").read_text())["metrics"]
    manifest = json.loads((run_dir / "model" / "run.json").read_text())
    assert manifest["data"]["examples"] == 40 and (run_dir / "model" / "model.safetensors").exists()
    export_state = json.loads((run_dir / "export" / "run.json").read_text())["train_state"]
    (resumed_from,) = export_state["resumed_from_steps"]
    assert resumed_from >= 3 and resumed_from % 3 == 0 and state["step"] == 20


RAY_LOG_LINE = re.compile(r"\b(INFO|DEBUG)\b\s+\S+\.py:\d+ --")  # Ray's own log format: "<time> INFO worker.py:2029 -- ..."


@pytest.mark.ray
def test_console_shows_each_progress_line_once_and_no_ray_info(tmp_path, tiny_model_dir, bioasq_passages):
    corpus = bioasq_corpus(tmp_path, 8, bioasq_passages)
    result = run_job("--model", str(tiny_model_dir), "--data.path", str(corpus), "--data.text_field", "meta.context",
                     "--run.name", "console", "--run.storage_path", str(tmp_path / "runs"),
                     "--train.log_every_n_steps", "1", "--run.checkpoint_every_n_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    console = (result.stdout + result.stderr).splitlines()
    for step in range(1, 5):  # 8 documents / 2 workers x batch 1: 4 steps, a progress line each
        lines = [line for line in console if f"[disc-ray] step {step}/4 |" in line]
        assert len(lines) == 1, (step, lines)
    assert sum("[disc-ray] checkpoint checkpoint_000002 saved" in line for line in console) == 1
    assert sum(line.startswith("[disc-ray] data: ") for line in console) == 1
    assert sum(line.startswith("[disc-ray] done: step 4") for line in console) == 1
    assert not [line for line in console if "TrainingReport(" in line or RAY_LOG_LINE.search(line)], console

"""Shared fixtures: the real tokenizer, tiny random models of the embedded default's family, real data."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
BIOASQ = SHARED_DATA / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
IFEVAL = SHARED_DATA / "ifeval" / "input_data.jsonl"

# Test tiers (markers registered in pyproject.toml): a test marked `ray` starts a Ray cluster or runs an
# entry point as a subprocess; every other test is `core` (in process, pure torch / data logic) and is
# what `make test-fast` runs, less those marked `slow`. A core test that starts Ray fails (below), so a
# new test cannot land in the fast tier by mistake.


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("ray") is None:
            item.add_marker(pytest.mark.core)


@pytest.fixture(autouse=True)
def _core_tests_start_no_ray(request):
    def ray_running() -> bool:
        ray = sys.modules.get("ray")
        return ray is not None and ray.is_initialized()

    running_before = ray_running()  # a module-scoped cluster of the ray tests beside it may be up already
    yield
    if request.node.get_closest_marker("ray") is None and not running_before and ray_running():
        ray = sys.modules["ray"]
        ray.shutdown()
        pytest.fail("this test started Ray: mark it @pytest.mark.ray (it is not a core test)")


@pytest.fixture()
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine spin against each other.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster for one test module (4 logical CPUs: 2 training workers + their data tasks)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def assert_packed_loss_matches_reference(student, teacher, examples, cfg, *, loss_atol: float = 1e-6) -> None:
    """Packed ``compute_loss`` of ``examples`` equals the per-split ``reference_disc_loss``: loss and every
    parameter's gradient (rtol 1e-5; gradients atol 1e-5). Leaves the student's gradients zeroed."""
    from disc_ray.objectives import compute_loss, pack_disc_batch
    from disc_ray.reference import reference_disc_loss

    def grads():
        return {n: p.grad.detach().clone() for n, p in student.named_parameters() if p.grad is not None}

    packed = compute_loss(student, teacher, pack_disc_batch(examples), cfg)
    packed.loss.backward()
    packed_grads = grads()
    student.zero_grad()
    reference = reference_disc_loss(student, teacher, examples, temperature=cfg.temperature)
    reference.backward()
    reference_grads = grads()
    student.zero_grad()
    assert packed.loss.item() > 1e-4
    torch.testing.assert_close(packed.loss, reference, rtol=1e-5, atol=loss_atol)
    assert packed_grads.keys() == reference_grads.keys() and packed_grads
    for name in packed_grads:
        torch.testing.assert_close(packed_grads[name], reference_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def assert_two_ranks_match_one_process(tmp_path, model_dir, tokenizer, texts, *, run_name: str, batch_size: int,
                                       epochs: int, lr: float = 3e-3):
    """Ray Train over 2 FSDP2 ranks (``batch_size`` documents each) and ``run_adaptation`` in one process
    (``2 * batch_size`` documents) train ``texts`` from ``model_dir`` for ``epochs`` epochs of one step each
    (every step sees every text): the per-step DiSC losses are equal (rtol 1e-4, atol 1e-7). Needs a Ray
    cluster (``local_ray``). Returns (Ray Train result, the per-step losses, the one-process model after training)."""
    import json

    import ray

    from disc_ray.config import AdaptConfig, TrainConfig, load_config
    from disc_ray.loop import run_adaptation
    from disc_ray.models import load_model_and_tokenizer
    from disc_ray.splits import SplitConfig, example_to_row, prepare_document
    from disc_ray.train import build_trainer

    assert len(texts) == 2 * batch_size, "one step per epoch: 2 ranks x batch_size documents"
    rows = [example_to_row(prepare_document(t, tokenizer, SplitConfig())[0]) for t in texts]
    cfg = load_config(AdaptConfig, None, [f"--run.storage_path={tmp_path / 'runs'}", "--workers.num_workers=2",
                                          f"--run.name={run_name}", f"--train.lr={lr}", f"--train.batch_size={batch_size}",
                                          f"--train.epochs={epochs}"])
    result = build_trainer(cfg, ray.data.from_items(rows), total_steps=epochs, model_source=str(model_dir)).fit()
    assert result.error is None
    metrics = (tmp_path / "runs" / run_name / "metrics.jsonl").read_text().splitlines()
    distributed = [json.loads(line)["loss"] for line in metrics]
    single, _ = load_model_and_tokenizer(str(model_dir))
    local = run_adaptation(single, tokenizer, texts, train_cfg=TrainConfig(lr=lr, batch_size=2 * batch_size, epochs=epochs),
                           log=lambda *_: None)
    assert len(distributed) == epochs
    torch.testing.assert_close(torch.tensor(distributed), torch.tensor([h["loss"] for h in local.history]), rtol=1e-4, atol=1e-7)
    return result, distributed, single


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded default converted to safetensors (once per machine, ~30 s; cached afterwards)."""
    from disc_ray.models import embedded_default_dir

    return embedded_default_dir()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from disc_ray.models import load_tokenizer

    return load_tokenizer(str(embedded_dir))


@pytest.fixture()
def tiny_model(embedded_dir):
    """A fresh 2-layer random model with the real tokenizer (function scope: tests may train it)."""
    from disc_ray.models import build_tiny_model

    model, _ = build_tiny_model(str(embedded_dir))
    return model


@pytest.fixture()
def student_teacher(tiny_model):
    """(student, teacher): the teacher is the frozen initial model, the student slightly perturbed."""
    teacher = copy.deepcopy(tiny_model).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return tiny_model, teacher


@pytest.fixture(scope="session")
def bioasq_passages() -> list[str]:
    from disc_ray.records import load_jsonl

    rows = load_jsonl(BIOASQ)
    return [row["meta"]["context"] for row in rows]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A tiny random model of the embedded default's family saved as a Hugging Face folder (read-only: jobs load it)."""
    from disc_ray.models import build_tiny_model

    model, tokenizer = build_tiny_model(str(embedded_dir))
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

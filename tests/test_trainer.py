"""The trainer: a run end to end, resume after SIGKILL, config errors, rollout consistency."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from g2rl_core.config import ConfigError, TrainConfig, from_mapping, load_profile, parse_overrides
from g2rl_core.engines.checkpoint import latest_checkpoint, read_manifest
from g2rl_core.engines.native import Trainer
from g2rl_core.maths.features import causal_lm_sequence_features
from g2rl_core.maths.losses import k3_kl
from g2rl_core.models import load_policy
from g2rl_core.rollout import TransformersRollout


def _cli(params, *args):
    return [sys.executable, "-m", "g2rl_core.pipeline.cli", "--params", str(params), *args]


def _rows(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["grpo", "entropy", "g2rl"])
def test_each_method_trains_and_logs(tiny_base, tmp_path, method):
    profile = load_profile("tiny", tiny_base / "params.yaml")
    cfg = profile.train_config(method, 0, steps=3, val_every=3)
    final = Trainer(cfg, tmp_path / method).train()
    assert (final / "model.safetensors").exists()
    rows = _rows(tmp_path / method)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in val] == [0, 3]
    for key in [
        "reward_mean",
        "accuracy",
        "response_length_mean",
        "entropy_mean",
        "kl",
        "clip_frac",
        "grad_norm",
        "nu_mean",
        "nu_std",
        "phi_cos_mean",
        "phi_neg_share",
        "step_time_s",
        "tokens_per_s",
    ]:
        assert all(key in r and r[key] == r[key] for r in train), key  # present and not NaN
    assert all(0 <= r["nu_mean"] <= 1 and 0 <= r["phi_neg_share"] <= 1 for r in train)
    assert all(0 <= r["val_mean_at_2"] <= 1 for r in val)
    # Weights move exactly when some advantage is non-zero (or the entropy bonus acts): with all
    # advantages 0 the PPO term has no gradient, and the KL term's gradient is 0 while policy == reference.
    base = load_file(tiny_base / "base" / "model.safetensors")
    trained = load_file(final / "model.safetensors")
    moved = any(not torch.equal(base[k], trained[k]) for k in base)
    signal = any(r["advantage_abs_mean"] > 0 for r in train) or method == "entropy"
    assert moved == signal
    if method in ("g2rl", "entropy"):  # g2rl: all-wrong groups still get standardised nubar advantages
        assert moved


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_base, tmp_path):
    params = tiny_base / "params.yaml"
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        _cli(params, "train", "--method", "g2rl", "--out", str(killed)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while latest_checkpoint(killed / "checkpoints") is None:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = read_manifest(latest_checkpoint(killed / "checkpoints"))
    assert state["step"] < 12 and not (killed / "final").exists(), "the kill did not land mid-run"

    subprocess.run(_cli(params, "train", "--method", "g2rl", "--out", str(killed)), check=True, capture_output=True)
    subprocess.run(_cli(params, "train", "--method", "g2rl", "--out", str(clean)), check=True, capture_output=True)
    a = load_file(killed / "final" / "model.safetensors")
    b = load_file(clean / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = {"step_time_s", "tokens_per_s"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(_rows(killed)) == strip(_rows(clean))
    # run_info.json: a finished run run again resumes at its end, and its record totals both processes
    first = json.loads((clean / "run_info.json").read_text())
    subprocess.run(_cli(params, "train", "--method", "g2rl", "--out", str(clean)), check=True, capture_output=True)
    again = json.loads((clean / "run_info.json").read_text())
    assert (first["processes"], again["processes"]) == (1, 2) and again["wall_seconds"] > first["wall_seconds"]
    assert json.loads((killed / "run_info.json").read_text())["processes"] == 1  # a killed process leaves no record
    (clean / "run_info.json").write_text('{"command": "train"}')  # damaged: a one-line error naming it
    done = subprocess.run(
        _cli(params, "train", "--method", "g2rl", "--out", str(clean)), capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{clean / 'run_info.json'}: not a run_info record (KeyError); delete it" in done.stderr


def test_a_run_that_starts_afresh_forgets_earlier_processes_time(tiny_base, tmp_path):
    """The engines delete run_info.json when a run starts from step 0 (a new run, or a config change)."""
    profile = load_profile("tiny", tiny_base / "params.yaml")
    (tmp_path / "run_info.json").write_text(json.dumps({"command": "train", "argv": [], "wall_seconds": 99.0}))
    Trainer(profile.train_config("grpo", 0, steps=1, checkpoint_every=1), tmp_path).train()
    assert not (tmp_path / "run_info.json").exists()
    (tmp_path / "run_info.json").write_text(json.dumps({"command": "train", "argv": [], "wall_seconds": 99.0}))
    assert Trainer.discard_stale_checkpoint(profile.train_config("grpo", 0, steps=1, lr=0.5), tmp_path)
    assert not (tmp_path / "run_info.json").exists()


def test_resume_refuses_a_different_config(tiny_base, tmp_path):
    profile = load_profile("tiny", tiny_base / "params.yaml")
    Trainer(profile.train_config("grpo", 0, steps=3, checkpoint_every=3), tmp_path).train()
    with pytest.raises(ConfigError, match="lr"):
        Trainer(profile.train_config("grpo", 0, steps=3, checkpoint_every=3, lr=0.5), tmp_path).train()


def test_config_errors_name_field_value_and_choices(tiny_base, tmp_path):
    with pytest.raises(
        ConfigError, match=r"method = 'ppo' is not allowed; choose one of \['grpo', 'entropy', 'evol', 'g2rl'\]"
    ):
        TrainConfig(method="ppo")
    with pytest.raises(ConfigError, match="clip_ratio = -0.1 must be >= 0"):
        TrainConfig(clip_ratio=-0.1)
    with pytest.raises(ConfigError, match="lr = 'fast' has type str; expected float"):
        TrainConfig(lr="fast")
    with pytest.raises(ConfigError, match="ppo_mini_batch_size = 3 must divide prompts_per_step = 16"):
        TrainConfig(ppo_mini_batch_size=3)
    with pytest.raises(ConfigError, match=r"unknown field 'kl_coeff'; did you mean 'kl_coef'\?"):
        from_mapping(TrainConfig, {"kl_coeff": 1.0})
    with pytest.raises(ConfigError, match=r"shaping: variant = 'prose' is not allowed"):
        from_mapping(TrainConfig, {"shaping": {"variant": "prose"}})
    with pytest.raises(ConfigError, match=r"rollout: unknown field 'bakend'; did you mean 'backend'"):
        from_mapping(TrainConfig, {"rollout": {"bakend": "vllm"}})
    for name, bad in [("lr", float("inf")), ("kl_coef", float("nan")), ("grad_clip", float("nan"))]:
        with pytest.raises(ConfigError, match=f"{name} = .* must be a finite number"):
            TrainConfig(**{name: bad})
    with pytest.raises(ConfigError, match="lam"):
        from_mapping(TrainConfig, {"shaping": {"lam": float("nan")}})
    with pytest.raises(ConfigError, match="feature_chunk_size = 0 must be > 0"):
        TrainConfig(feature_chunk_size=0)
    with pytest.raises(ConfigError, match="threads = -1 must be > 0"):
        TrainConfig(threads=-1)
    assert parse_overrides(["lr=1e-4", "method=g2rl", "rollout.chat_template=true", "shaping.lam=2"]) == {
        "lr": 1e-4,
        "method": "g2rl",
        "rollout": {"chat_template": True},
        "shaping": {"lam": 2},
    }
    with pytest.raises(ConfigError, match="profile = 'huge' is not defined"):
        load_profile("huge", tiny_base / "params.yaml")
    with pytest.raises(ConfigError, match="no parameter file"):
        load_profile("tiny", tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"`g2rl sft --profile tiny-nope --out build/tiny-nope`"):
        load_policy("build/tiny-nope/base")  # an embedded profile's base: how to build it
    with pytest.raises(ConfigError, match=r"no such directory\. Set model to a model directory or a hub name") as err:
        load_policy(str(tmp_path / "elsewhere"))
    assert "g2rl sft" not in str(err.value)


def test_cli_reports_errors_without_traceback(tiny_base, tmp_path):
    out = subprocess.run(
        _cli(tiny_base / "params.yaml", "train", "--method", "g2rl", "--out", str(tmp_path), "--set", "shaping.lam=-1"),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "g2rl train: error: profile 'tiny': shaping: lam = -1 must be >= 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_sampler_and_trainer_log_probs_agree(tiny_base):
    model, tokenizer = load_policy(str(tiny_base / "base"))
    backend = TransformersRollout(model, tokenizer, return_logprobs=True)
    prompts = [
        "Compute 1+2+3.",
        "Compute 4+5+6+7+8.\nPlease reason step by step, and put your final answer within \\boxed{}.",
    ]
    batch = backend.generate(prompts, n=3, temperature=0.7, top_p=1.0, max_new_tokens=30, seed=0)
    feats = causal_lm_sequence_features(
        model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, temperature=0.7
    )
    mask = batch.response_mask.bool()
    assert batch.prompt_mask[:, 0].eq(0).any()  # left padding is exercised
    torch.testing.assert_close(feats.logprobs[mask], batch.sampler_logprobs[mask], rtol=1e-4, atol=1e-4)
    again = backend.generate(prompts, n=3, temperature=0.7, top_p=1.0, max_new_tokens=30, seed=0)
    assert again.texts == batch.texts  # seeded


def test_k3_kl_is_non_negative_and_zero_at_equality():
    logp = torch.randn(50)
    assert torch.all(k3_kl(logp, logp) == 0)
    assert torch.all(k3_kl(logp, logp + torch.randn(50)) >= 0)


# --- run-directory safety (issue 16 items 2-4 and 9, issue 14 item 6) ----------------------------
def test_non_finite_grad_norm_stops_the_run_before_it_checkpoints(tiny_base, tmp_path, monkeypatch):
    from g2rl_core.engines.checkpoint import NonFiniteError, latest_checkpoint

    update = Trainer.update

    def diverging(self, *args):
        return {**update(self, *args), "grad_norm": float("nan")}

    monkeypatch.setattr(Trainer, "update", diverging)
    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=2, checkpoint_every=1)
    with pytest.raises(NonFiniteError, match=r"^step 1: grad_norm = nan is not finite; the run stopped before"):
        Trainer(cfg, tmp_path).train()
    assert latest_checkpoint(tmp_path / "checkpoints") is None


def test_non_finite_weights_stop_the_run_before_it_checkpoints(tiny_base, tmp_path, monkeypatch):
    from g2rl_core.engines.checkpoint import NonFiniteError, latest_checkpoint

    update = Trainer.update

    def poisoning(self, *args):
        stats = update(self, *args)
        if self.step == 1:  # the second step's update leaves a NaN weight behind finite statistics
            with torch.no_grad():
                self.model.model.norm.weight[0] = float("nan")
        return stats

    monkeypatch.setattr(Trainer, "update", poisoning)
    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=3, checkpoint_every=1)
    with pytest.raises(NonFiniteError, match=r"^step 2: parameter model.norm.weight is not finite") as err:
        Trainer(cfg, tmp_path).train()
    assert "step-00000001" in str(err.value)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000001"


def test_resume_drops_a_torn_log_line_and_refuses_a_damaged_checkpoint(tiny_base, tmp_path):
    from g2rl_core.engines.checkpoint import CheckpointError, latest_checkpoint

    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=3, checkpoint_every=3)
    Trainer(cfg, tmp_path).train()
    before = (tmp_path / "log.jsonl").read_text()
    with (tmp_path / "log.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "step": 4, "reward_me')  # a kill in the middle of a write
    Trainer(cfg, tmp_path).train()
    assert (tmp_path / "log.jsonl").read_text() == before

    weights = latest_checkpoint(tmp_path / "checkpoints") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint file {weights} fails its sha256 check"):
        Trainer(cfg, tmp_path).train()


def test_old_pickle_checkpoint_is_refused_without_running_it(tiny_base, tmp_path):
    from g2rl_core.engines.checkpoint import CheckpointError

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "marker"), "w"))

    torch.save({"step": 3, "model": Payload()}, tmp_path / "checkpoint.pt")
    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=3)
    with pytest.raises(CheckpointError, match="checkpoint.pt is a checkpoint in the old one-pickle format"):
        Trainer(cfg, tmp_path).train()
    assert not (tmp_path / "marker").exists()


def test_cli_threads_reach_the_trainer_config(tmp_path, monkeypatch):
    """`g2rl train --threads N` is the run's thread count: the engine must not reset it to the profile's."""
    from g2rl_core.engines import native
    from g2rl_core.pipeline.cli import main

    seen = []

    class Recorder:
        def __init__(self, cfg, out):
            seen.append(cfg.threads)

        @staticmethod
        def discard_stale_checkpoint(cfg, out):
            return False

        def train(self):
            return tmp_path

    monkeypatch.setattr(native, "Trainer", Recorder)
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    argv = ["train", "--params", str(params), "--profile", "tiny", "--method", "grpo", "--out", str(tmp_path / "r")]
    assert main(argv) == 0 and main([*argv, "--threads", "1"]) == 0
    assert seen == [load_profile("tiny", params).threads, 1]


def _lrs(scheduler, steps: int) -> list[float]:
    """The learning rate each of ``steps`` training steps runs at (the trainer steps the schedule after each)."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_lr_schedule_is_verls_constant_with_warmup():
    import io

    from g2rl_core.engines.native import lr_schedule

    def optimizer(lr):
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)

    # No warm-up (every profile): bit-identical to the factor 1.0 the trainer used before.
    lr = 5e-7
    before = torch.optim.lr_scheduler.LambdaLR(optimizer(lr), lambda s: 1.0)
    assert _lrs(lr_schedule(optimizer(lr), 0), 6) == _lrs(before, 6) == [lr] * 6
    # Warm-up 3: verl 0.9.1's (and transformers') factors s / 3 from step 0, then 1 (the old ones were (s + 1) / 3).
    assert _lrs(lr_schedule(optimizer(1.0), 3), 6) == [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    # The checkpoint keeps the schedule's state through a weights-only load.
    schedule = lr_schedule(optimizer(1.0), 3)
    _lrs(schedule, 2)
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    resumed = lr_schedule(optimizer(1.0), 3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert _lrs(resumed, 3) == [2 / 3, 1.0, 1.0]


def test_checkpointed_schedule_state_does_not_depend_on_how_its_function_is_built(tiny_base, tmp_path):
    """A checkpoint stores the schedule's position only: the same bytes as a plain-lambda LambdaLR's state."""
    import io

    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=1)
    trainer = Trainer(cfg, tmp_path)
    reference = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
    for _ in range(3):
        trainer.scheduler.step()
        reference.step()
    saved = torch.load(trainer.save_checkpoint() / "state.pt", weights_only=True)["scheduler"]

    def pickled(state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    assert pickled(saved) == pickled(reference.state_dict())


def test_old_policy_from_rollout_needs_transformers_and_float32():
    from g2rl_core.config import RolloutConfig

    TrainConfig(old_policy_from_rollout=True)
    with pytest.raises(ConfigError, match="old_policy_from_rollout needs rollout.backend: transformers"):
        TrainConfig(old_policy_from_rollout=True, rollout=RolloutConfig(backend="vllm"))
    with pytest.raises(ConfigError, match="'bf16'"):
        TrainConfig(old_policy_from_rollout=True, precision="bf16")


def test_a_step_with_the_old_policy_from_rollout_skips_the_pass_and_matches_it(tiny_base, tmp_path, monkeypatch):
    """Same draws, same rewards; the old policy's numbers differ by float32 rounding only, and no pass runs."""
    from g2rl_core.engines import native

    profile = load_profile("tiny", tiny_base / "params.yaml")
    rows = {}
    for flag in (False, True):
        cfg = profile.train_config("g2rl", 0, steps=1, old_policy_from_rollout=flag, device="cpu")
        trainer = Trainer(cfg, tmp_path / str(flag))
        if flag:
            monkeypatch.setattr(native, "micro_batched_features", lambda *a, **k: pytest.fail("an old-policy pass ran"))
        rows[flag] = trainer.train_step()
    plain, streamed = rows[False], rows[True]
    for key in ("reward_mean", "response_length_mean"):
        assert streamed[key] == plain[key], key
    for key in ("entropy_mean", "phi_cos_mean", "nu_mean", "advantage_abs_mean"):  # before any update
        assert streamed[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key
    for key in ("loss", "kl", "grad_norm"):  # the second mini-batch follows an optimiser step
        assert streamed[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-6), key


def test_the_old_policy_pass_runs_where_the_sampling_loop_is_refused(tiny_base, tmp_path, monkeypatch):
    from g2rl_core.engines import native

    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=1, old_policy_from_rollout=True)
    trainer = Trainer(cfg, tmp_path)
    trainer.backend.use_generate = True  # what a refusal (a GPU, an encoder-decoder model) leads to
    calls = []
    real = native.micro_batched_features
    monkeypatch.setattr(native, "micro_batched_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.warns(UserWarning, match="the old-policy pass runs"):
        trainer.train_step()
    assert calls == [1]


def test_a_checkpoint_from_before_fused_adamw_resumes_fused(tiny_base, tmp_path, monkeypatch):
    """Its saved moments are loaded, and the optimiser keeps today's fused kernel (torch would restore
    the saved groups' ``fused: None``)."""
    from g2rl_core.engines import native

    cfg = load_profile("tiny", tiny_base / "params.yaml").train_config("grpo", 0, steps=1, checkpoint_every=1)
    Trainer(cfg, tmp_path).train()
    real = native.ckpt.load_checkpoint

    def unfused(*args, **kwargs):
        state = real(*args, **kwargs)
        for group in state["optimizer"]["param_groups"]:
            group["fused"] = None
        return state

    monkeypatch.setattr(native.ckpt, "load_checkpoint", unfused)
    resumed = Trainer(cfg, tmp_path)
    resumed.maybe_resume()
    assert resumed.step == 1 and all(group["fused"] for group in resumed.optimizer.param_groups)
    assert all(len(resumed.optimizer.state[p]) for p in resumed.model.parameters())  # the moments came back
    resumed.train_step()


def test_a_checkpoint_without_a_later_setting_resumes_at_its_default(tmp_path):
    from g2rl_core.engines.checkpoint import config_differences

    saved = json.loads(json.dumps(TrainConfig().to_dict()))
    del saved["old_policy_from_rollout"]  # written before the setting existed
    assert config_differences(saved, TrainConfig()) == []
    assert config_differences(saved, TrainConfig(old_policy_from_rollout=True)) == ["old_policy_from_rollout"]
    assert config_differences({**saved, "retired": 1}, TrainConfig()) == ["retired"]
    assert config_differences([], TrainConfig(lr=1.0)) == ["lr"]


def test_a_rebuilt_base_model_makes_a_finished_run_stale(tiny_base, tmp_path):
    """The config names the base model by path; a base rebuilt there with other weights must not be resumed from."""
    import shutil

    from transformers import AutoModelForCausalLM

    from g2rl_core.engines import checkpoint as ckpt

    base = tmp_path / "build" / "x" / "base"
    shutil.copytree(tiny_base / "base", base)
    profile = load_profile("tiny", tiny_base / "params.yaml")
    cfg = profile.train_config("grpo", 0, steps=2, checkpoint_every=2, model=str(base))
    run = tmp_path / "run"
    Trainer(cfg, run).train()
    assert not Trainer.discard_stale_checkpoint(cfg, run)
    (base / "sft_summary.json").write_text('{"sft_seconds": 1.0}')  # a record beside the weights: the same base
    assert not Trainer.discard_stale_checkpoint(cfg, run)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(base)  # the same path, other weights
    with pytest.raises(ConfigError, match=r"different config or base model \(fields \['base_model_sha256'\]\)"):
        Trainer(cfg, run).train()
    assert Trainer.discard_stale_checkpoint(cfg, run)
    assert ckpt.latest_checkpoint(run / ckpt.CHECKPOINTS) is None
    # a record from before digests counts as another base; a hub name has no digest
    assert ckpt.run_differences(cfg.to_dict(), cfg) == [ckpt.BASE_MODEL]
    assert ckpt.run_differences(ckpt.run_identity(cfg), cfg) == []
    assert ckpt.base_model_digest("Qwen/Qwen3-1.7B-Base") is None

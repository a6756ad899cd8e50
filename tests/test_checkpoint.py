"""Run-directory safety: checkpoints (checksums, no code execution, atomic, keep-last-K), torn logs, the run lock."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_qwen3

from g2rl_core.config import ConfigError, TrainConfig
from g2rl_core.engines import checkpoint as ckpt
from g2rl_core.engines.native import Trainer
from g2rl_core.errors import DataError, G2RLError
from g2rl_core.runlock import LOCK_NAME, run_lock


def _trained_model_and_optimizer(seed=0):
    model = tiny_qwen3(tie_word_embeddings=True, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3, 4]])).logits.square().mean().backward()
    optimizer.step()
    return model, optimizer


def _save(root, step, model, optimizer=None, config=None, keep=1):
    state = {"optimizer": optimizer.state_dict() if optimizer else {}, "rng": ckpt.capture_rng()}
    return ckpt.save_checkpoint(root, step, model, state, config or {"lr": 1.0}, keep=keep)


def _rewrite_manifest(path):
    """Recompute the manifest's hashes: a forger who controls the directory can always do this."""
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    for name in ckpt.FILES:
        manifest["files"][name] = {"sha256": ckpt.sha256_file(path / name), "bytes": (path / name).stat().st_size}
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))


def test_round_trip_restores_weights_optimizer_and_rng_exactly(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    torch.manual_seed(123)
    path = _save(tmp_path, 7, model, optimizer)
    expected_draw = torch.rand(5)
    assert sorted(p.name for p in path.iterdir()) == sorted([*ckpt.FILES, ckpt.MANIFEST])

    other, other_opt = _trained_model_and_optimizer(seed=1)
    state = ckpt.load_checkpoint(path, other)
    other_opt.load_state_dict(state["optimizer"])
    ckpt.restore_rng(state["rng"])
    assert state["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert other.lm_head.weight is other.model.embed_tokens.weight  # tied weights stay tied
    for a, b in zip(optimizer.state.values(), other_opt.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(torch.rand(5), expected_draw)


@pytest.mark.parametrize("name", ckpt.FILES)
def test_a_flipped_byte_is_refused_naming_the_file(tmp_path, name):
    model, optimizer = _trained_model_and_optimizer()
    path = _save(tmp_path, 3, model, optimizer, config={"lr": 1.0})
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=f"{name} fails its sha256 check") as err:
        ckpt.load_checkpoint(path, tiny_qwen3(tie_word_embeddings=True, seed=1))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    if name == ckpt.CONFIG:
        with pytest.raises(ckpt.CheckpointError, match="config.json fails its sha256 check"):
            ckpt.read_config(path)


def test_crafted_state_that_runs_code_on_load_is_refused(tmp_path):
    class Payload:
        def __init__(self, marker):
            self.marker = str(marker)

        def __reduce__(self):
            return (open, (self.marker, "w"))  # unpickling opens (creates) the marker file

    model, optimizer = _trained_model_and_optimizer()
    path = _save(tmp_path / "run", 3, model, optimizer)

    proof, proof_marker = tmp_path / "proof.pt", tmp_path / "proof-marker"
    torch.save({"step": 3, "optimizer": Payload(proof_marker)}, proof)
    torch.load(proof, weights_only=False)
    assert proof_marker.exists(), "the crafted file does not run code: the test proves nothing"

    marker = tmp_path / "marker"
    torch.save({"step": 3, "optimizer": Payload(marker), "rng": ckpt.capture_rng()}, path / ckpt.STATE)
    _rewrite_manifest(path)  # the checksum passes: only the loader stands in the way
    with pytest.raises(ckpt.CheckpointError, match="state.pt holds objects other than tensors"):
        ckpt.load_checkpoint(path, tiny_qwen3(tie_word_embeddings=True))
    assert not marker.exists()


def test_keep_the_last_k_checkpoints(tmp_path):
    model, _ = _trained_model_and_optimizer()
    for step in range(1, 6):
        _save(tmp_path, step, model, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]
    _save(tmp_path, 6, model, keep=1)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000006"]  # no temporaries or trash left
    with pytest.raises(ConfigError, match="keep_checkpoints = 0 must be an integer >= 1"):
        _save(tmp_path, 7, model, keep=0)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _trained_model_and_optimizer()
    _save(tmp_path, 1, model, optimizer)

    def disk_full(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="cannot write checkpoint .*step-00000002: No space left on device"):
        _save(tmp_path, 2, model, optimizer)
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), tiny_qwen3(tie_word_embeddings=True))["step"] == 1
    # What a SIGKILL mid-save leaves (a temporary folder) is ignored, then cleaned up.
    (tmp_path / ".tmp-step-00000002-999").mkdir()
    (tmp_path / ".tmp-step-00000002-999" / ckpt.WEIGHTS).write_bytes(b"half")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000001"
    ckpt.clean_partial(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_stale_config_check_reads_only_the_sidecar(tmp_path):
    cfg = TrainConfig()
    out = tmp_path / "run"
    model, optimizer = _trained_model_and_optimizer()
    path = _save(out / ckpt.CHECKPOINTS, 10, model, optimizer, config=ckpt.run_identity(cfg))
    for name in (ckpt.WEIGHTS, ckpt.STATE):  # if the check read these, it would fail
        (path / name).write_bytes(b"not read")
    (out / "log.jsonl").write_text('{"kind": "val", "step": 0}\n')
    assert ckpt.read_config(path) == json.loads(json.dumps(ckpt.run_identity(cfg)))
    assert not Trainer.discard_stale_checkpoint(cfg, out)
    assert not Trainer.discard_stale_checkpoint(TrainConfig(keep_checkpoints=3), out)  # does not change results
    assert Trainer.discard_stale_checkpoint(TrainConfig(lr=1e-6), out)
    assert ckpt.latest_checkpoint(out / ckpt.CHECKPOINTS) is None and not (out / "log.jsonl").exists()


def test_old_pickle_checkpoint_is_deleted_on_restart_without_being_loaded(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ckpt.LEGACY_NAME).write_bytes(b"an old pickle, never opened")
    assert Trainer.discard_stale_checkpoint(TrainConfig(), out)
    assert not (out / ckpt.LEGACY_NAME).exists()


def test_torn_last_log_line_is_dropped_and_other_damage_named(tmp_path):
    log = tmp_path / "log.jsonl"
    good = ['{"kind": "val", "step": 0, "x": 0.1}', '{"kind": "train", "step": 1, "x": NaN}']
    log.write_text("\n".join(good) + '\n{"kind": "train", "st')
    assert [r["step"] for r in ckpt.read_log(log)] == [0, 1]
    log.write_text("\n".join(good) + "\n\0\0\0\0\n")  # zeros after a crash, newline included
    assert [r["step"] for r in ckpt.read_log(log)] == [0, 1]
    assert ckpt.truncate_log(log, 0) == 1
    assert log.read_text() == good[0] + "\n"
    log.write_text(good[0] + '\n{"kind": "tr\n' + good[1] + "\n")
    with pytest.raises(DataError, match=r"log.jsonl:2: not a JSON object"):
        ckpt.read_log(log)


def test_non_finite_checks():
    assert ckpt.non_finite_stats({"loss": 0.5, "grad_norm": 1.0, "kl": float("nan")}) == []
    assert ckpt.non_finite_stats({"loss": float("inf"), "grad_norm": float("nan")}) == ["loss", "grad_norm"]
    model = tiny_qwen3(tie_word_embeddings=False)
    assert ckpt.first_non_finite_parameter(model.named_parameters()) is None
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 2] = float("-inf")
    assert ckpt.first_non_finite_parameter(model.named_parameters()) == "model.layers.1.mlp.up_proj.weight"


# --- the run lock -----------------------------------------------------------------------------------
HOLD = """import sys, time
from g2rl_core.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_held_by_another_process_names_its_pid_and_host(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(G2RLError, match=f"in use by pid {holder.pid} on host {socket.gethostname()}") as err:
            with run_lock(tmp_path):
                pass
        assert "\n" not in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # the kernel dropped the dead holder's lock: taken over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "2020-01-01T00:00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_is_reentrant_in_one_thread_and_refused_to_another(tmp_path):
    errors = []

    def other_thread():
        try:
            with run_lock(tmp_path):
                pass
        except G2RLError as err:
            errors.append(str(err))

    with run_lock(tmp_path):
        with run_lock(tmp_path):
            pass
        assert (tmp_path / LOCK_NAME).exists()  # the inner exit did not release it
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0]
    with run_lock(tmp_path):
        pass


def test_second_train_on_one_out_fails_at_once_naming_the_holder(tiny_base, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "g2rl_core.pipeline.cli", "--params", str(tiny_base / "params.yaml")]
    with run_lock(out):
        start = time.perf_counter()
        second = subprocess.run(
            [*command, "train", "--method", "grpo", "--out", str(out), "--on-config-change", "restart"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        seconds = time.perf_counter() - start
    assert second.returncode == 2, second.stderr
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # nothing read, written or deleted
    print(f"second process refused after {seconds:.1f} s (interpreter start and imports included)")

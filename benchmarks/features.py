"""Benchmark: our log-prob + entropy pass and the fused Phi pass against a lean log-prob + entropy pass (CPU).

Variants, all under torch.no_grad, float32, temperature 1, the same --chunk tokens per chunk:

  lean    the lean pass, written out below (``lean_logprobs_and_entropy``): per chunk the logits GEMM,
          logsumexp, gather, softmax and one reduction sum_v p_v z_v, i.e. what TRL's
          selective_log_softmax plus an entropy computation does, without TRL's extras (its row-by-row
          logsumexp loop for float32, a second logsumexp inside entropy_from_logits, the division by a
          temperature of 1), so it is the leanest honest form of that pass;
  ours    g2rl_core.maths.features.token_logprobs_and_entropy (log-probs and entropy);
  fused   g2rl_core.maths.features.sequence_features (log-probs, entropy and Phi);
  matmul  (--floor) the logits GEMM alone, per chunk: the floor under every variant;
  literal (--literal N) eq. 14 token by token on N tokens, extrapolated to B x T;
  ours@old, fused@old  (--compare FILE) the same two functions from another copy of features.py, e.g.
          the code before a change (``git show REV:g2rl_core/maths/features.py > /tmp/old.py``).

Cases: LM-head shapes of Qwen3-1.7B (d = 2048) and Qwen3-4B (d = 2560), V = 151936, for B sequences of
T tokens each (all on the mask). The CPU is shared and its speed drifts, so the variants of a case run
interleaved: round r runs each once, in an order rotated by r, after one untimed warm-up chunk. A
ratio is the median over rounds of the within-round ratio variant / lean; times are medians over
rounds. Before timing, each case checks that ours and fused return the lean pass's numbers.

Clock: on a CPU shared with other jobs, wall time mostly measures the other jobs (a pass that needs
2.4 s of CPU took 8-10 s of wall time at a load of 13 on 2 cores). The default is therefore this
process's CPU time (time.process_time) on one thread, which counts the work of the pass itself;
wall times are printed next to it. On an idle machine, --clock wall --threads 2 measures what a
user waits for (with several threads, CPU time also counts threads waiting for each other).

    python benchmarks/features.py                          # 1.7B and 4B heads, B = 1, T = 256
    python benchmarks/features.py --batches 1 8            # and B = 8 (the full target grid: ~9x longer)
    python benchmarks/features.py --shapes 1.7b --seq 64 --rounds 3 --floor
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch

from g2rl_core.maths.features import literal_sequence_features, sequence_features, token_logprobs_and_entropy

#: LM-head shapes (d, V) of the policies the paper trains.
HEADS = {"1.7b": (2048, 151936), "4b": (2560, 151936)}

#: Targets of issue 17 (ratio to the lean pass, at the same chunk size).
TARGETS = {"ours": 1.03, "fused": 1.05}


def lean_logprobs_and_entropy(
    hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, response_ids: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lean baseline: log p(y_t) and entropy [B, T] with logsumexp, gather, softmax and one reduction."""
    B, T, d = hidden_states.shape
    flat_h, flat_ids = hidden_states.reshape(B * T, d), response_ids.reshape(-1)
    logprobs, entropies = [], []
    for start in range(0, B * T, chunk_size):
        logits = flat_h[start : start + chunk_size] @ lm_head_weight.T
        log_z = torch.logsumexp(logits, dim=-1)
        logprobs.append(logits.gather(-1, flat_ids[start : start + chunk_size].unsqueeze(-1)).squeeze(-1) - log_z)
        probs = torch.softmax(logits, dim=-1)
        entropies.append(log_z - (probs * logits).sum(-1))
    return torch.cat(logprobs).view(B, T), torch.cat(entropies).view(B, T)


def logits_matmul(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, chunk_size: int) -> None:
    """The floor: the chunked [c, d] x [d, V] logits GEMM and nothing else."""
    flat_h = hidden_states.reshape(-1, hidden_states.shape[-1])
    for start in range(0, flat_h.shape[0], chunk_size):
        flat_h[start : start + chunk_size] @ lm_head_weight.T


def _inputs(batch: int, seq: int, hidden: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.empty(batch, seq, hidden).normal_(generator=g)
    # Logits of std ~1 (W ~ N(0, 1/d)), realised tokens drawn from p_t as a rollout would draw them.
    W = torch.empty(vocab, hidden).normal_(0.0, hidden**-0.5, generator=g)
    with torch.no_grad():
        probs = torch.softmax(h[:, :8].reshape(-1, hidden) @ W.T, -1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    ids[:, :8] = torch.multinomial(probs, 1, generator=g).view(batch, 8)
    mask = torch.ones(batch, seq, dtype=torch.long)
    return h, W, ids, mask


def _check_same_numbers(h, W, ids, mask) -> float:
    """Largest |difference| of ours and fused from the lean pass (log-probs, entropies) on 16 tokens, 2 chunks."""
    n = min(h.shape[1], 16)
    args = (h[:1, :n], W, ids[:1, :n], mask[:1, :n])
    lean = lean_logprobs_and_entropy(*args[:3], 8)
    ours = token_logprobs_and_entropy(*args, chunk_size=8)
    fused = sequence_features(*args, chunk_size=8)
    return max(
        (x - y).abs().max().item()
        for x, y in [(ours[0], lean[0]), (ours[1], lean[1]), (fused.logprobs, lean[0]), (fused.entropy, lean[1])]
    )


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location("features_compared", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_case(name: str, batch: int, args) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(CPU seconds, wall seconds) per variant and round."""
    d, V = HEADS[name]
    h, W, ids, mask = _inputs(batch, args.seq, d, V)
    c = args.chunk
    variants = {
        "lean": lambda: lean_logprobs_and_entropy(h, W, ids, c),
        "ours": lambda: token_logprobs_and_entropy(h, W, ids, mask, chunk_size=c),
        "fused": lambda: sequence_features(h, W, ids, mask, chunk_size=c),
    }
    if args.floor:
        variants["matmul"] = lambda: logits_matmul(h, W, c)
    if args.compare:
        old = _load_module(args.compare)  # before the warm-up, like the module under test
        variants["ours@old"] = lambda: old.token_logprobs_and_entropy(h, W, ids, mask, chunk_size=c)
        variants["fused@old"] = lambda: old.sequence_features(h, W, ids, mask, chunk_size=c)
    with torch.no_grad():
        diff = _check_same_numbers(h, W, ids, mask)
        print(f"  max |ours - lean|, |fused - lean| over log-probs and entropies: {diff:.2e}", flush=True)
        token_logprobs_and_entropy(h[:1, :8], W, ids[:1, :8], mask[:1, :8])  # warm-up: thread pool, MKL
        cpu = {key: [] for key in variants}
        wall = {key: [] for key in variants}
        keys = list(variants)
        for r in range(args.rounds):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                variants[key]()
                cpu[key].append(time.process_time() - start_cpu)
                wall[key].append(time.perf_counter() - start_wall)
            line = "  ".join(f"{k} {cpu[k][-1]:.2f} ({wall[k][-1]:.1f})" for k in keys)
            print(f"  round {r + 1}/{args.rounds}, CPU s (wall s): {line}", flush=True)
        if args.literal:
            n = min(args.literal, args.seq)
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            literal_sequence_features(h[:1, :n], W, ids[:1, :n], mask[:1, :n])
            cpu["literal"] = [(time.process_time() - start_cpu) / n * batch * args.seq]
            wall["literal"] = [(time.perf_counter() - start_wall) / n * batch * args.seq]
    return cpu, wall


def _ratio(times: list[float], lean: list[float]) -> float:
    """Median over rounds of time / lean time in the same round (one extrapolated time: over the lean median)."""
    if len(times) != len(lean):
        return statistics.median(times) / statistics.median(lean)
    return statistics.median(t / base for t, base in zip(times, lean, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(HEADS), default=["1.7b", "4b"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1], help="sequences B per case")
    parser.add_argument("--seq", type=int, default=256, help="tokens T per sequence")
    parser.add_argument("--chunk", type=int, default=128, help="tokens per chunk, the same for every variant")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over them; >= 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see Clock above)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="the clock the targets are judged on")
    parser.add_argument("--floor", action="store_true", help="also time the logits GEMM alone")
    parser.add_argument("--literal", type=int, default=0, metavar="N", help="also time eq. 14 on N tokens")
    parser.add_argument("--compare", metavar="FILE", help="also time the passes of this copy of features.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"T = {args.seq} tokens per sequence, chunk = {args.chunk}, float32, {args.rounds} interleaved rounds, "
        f"threads = {args.threads}, clock = {args.clock}, torch {torch.__version__}",
        flush=True,
    )
    began = time.perf_counter()
    rows = []
    for name in args.shapes:
        for batch in args.batches:
            d, V = HEADS[name]
            print(f"case {name} head (d = {d}, V = {V}), B = {batch}:", flush=True)
            rows.append((name, batch, *run_case(name, batch, args)))

    head = f"{'case':>14s} {'variant':>9s} {'CPU s':>7s} {'/ lean':>7s} {'wall s':>7s} {'/ lean':>7s}"
    print(f"\n{head}  target ({args.clock} clock)")
    for name, batch, cpu, wall in rows:
        for key in cpu:
            cells = [(statistics.median(times[key]), _ratio(times[key], times["lean"])) for times in (cpu, wall)]
            target = TARGETS.get(key)
            judged = cells[0 if args.clock == "cpu" else 1][1]
            verdict = "" if target is None else f"<= {target:.2f} {'met' if judged <= target else 'NOT met'}"
            (c_s, c_r), (w_s, w_r) = cells
            case = f"{name} B={batch}"
            print(f"{case:>14s} {key:>9s} {c_s:7.2f} {c_r:7.3f} {w_s:7.2f} {w_r:7.3f}  {verdict}")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()

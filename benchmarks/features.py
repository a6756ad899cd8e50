"""Benchmark: the cost of the G2RL feature Phi on top of the log-prob pass (CPU).

Three ways of getting per-token statistics at the Qwen3-1.7B head shape
(d = 2048, V = 151936, float32), for B x T response tokens:

  (a) log-probs + entropy only (what verl/TRL compute every step), chunked over tokens;
  (b) our fused pass: log-probs + entropy + Phi, same chunking (g2rl_core.maths.features);
  (c) literal per-token eq. 14: phi_t = W[y_t] - p_t^T W, one [V] x [V, d] product per token.

Each variant runs in a fresh process, so its peak resident memory (ru_maxrss minus the
peak after the inputs are built) is its own. Wall time is the median of --repeats runs.
(c) is ~1000x slower than (a); by default it is timed on --literal-tokens tokens and
the per-token time is scaled to B x T (printed as "extrapolated"); --literal-full times
it on every token.

    python benchmarks/features.py                 # 4 x 512, chunk 256
    python benchmarks/features.py --batch 1 --seq 64 --literal-full
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch

from g2rl_core.maths.features import literal_sequence_features, sequence_features, token_logprobs_and_entropy


def _inputs(args):
    g = torch.Generator().manual_seed(0)
    # Filled in place, so building the inputs leaves no temporary that would hide a peak.
    h = torch.empty(args.batch, args.seq, args.hidden).normal_(generator=g)
    W = torch.empty(args.vocab, args.hidden).normal_(0.0, 0.02, generator=g)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long)
    return h, W, ids, mask


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker(variant: str, args, out) -> None:
    torch.set_num_threads(args.threads)
    h, W, ids, mask = _inputs(args)
    base = _peak_rss_mib()
    times = []
    tokens = args.batch * args.seq
    if variant != "c":  # one untimed warm-up run: thread pools, allocator
        with torch.no_grad():
            token_logprobs_and_entropy(h[:1, :8], W, ids[:1, :8], mask[:1, :8])
    for _ in range(args.repeats if variant != "c" else 1):
        start = time.perf_counter()
        with torch.no_grad():
            if variant == "a":
                token_logprobs_and_entropy(h, W, ids, mask, chunk_size=args.chunk)
            elif variant == "b":
                sequence_features(h, W, ids, mask, chunk_size=args.chunk)
            else:
                if args.literal_full:
                    literal_sequence_features(h, W, ids, mask)
                else:
                    # First --literal-tokens tokens of the first response, scaled to B x T.
                    n = min(args.literal_tokens, args.seq)
                    literal_sequence_features(h[:1, :n], W, ids[:1, :n], mask[:1, :n])
                    tokens = n
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    if variant == "c" and not args.literal_full:
        seconds = seconds / tokens * args.batch * args.seq
    out.put((variant, seconds, _peak_rss_mib() - base, variant == "c" and not args.literal_full))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--chunk", type=int, default=256, help="tokens per chunk for (a) and (b)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--literal-tokens", type=int, default=16, help="tokens timed for (c)")
    parser.add_argument("--literal-full", action="store_true", help="time (c) on every token")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    results = {}
    for variant in ["a", "b", "c"]:
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(variant, args, queue))
        proc.start()
        results[variant] = queue.get()
        proc.join()

    names = {
        "a": "(a) log-probs + entropy",
        "b": "(b) fused log-probs + entropy + Phi",
        "c": "(c) literal per-token eq. 14",
    }
    print(
        f"shape B x T = {args.batch} x {args.seq}, d = {args.hidden}, V = {args.vocab}, float32, "
        f"chunk = {args.chunk}, threads = {args.threads}, torch {torch.__version__}"
    )
    print(f"{'variant':40s} {'wall s':>10s} {'peak extra MiB':>15s}")
    for key in "abc":
        _, seconds, mib, extrapolated = results[key]
        note = f"  (extrapolated from {min(args.literal_tokens, args.seq)} tokens)" if extrapolated else ""
        print(f"{names[key]:40s} {seconds:10.2f} {mib:15.0f}{note}")
    b_over_a = results["b"][1] / results["a"][1]
    c_over_b = results["c"][1] / results["b"][1]
    print(f"b/a = {b_over_a:.3f}  (target <= 1.10: {'met' if b_over_a <= 1.10 else 'NOT met'})")
    print(f"c/b = {c_over_b:.1f}  (target >= 10: {'met' if c_over_b >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()

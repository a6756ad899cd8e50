"""Quickstart: Phi, the cosine matrix S, nu and G2RL's shaped advantages for one group.

A random tiny Qwen3 model samples m responses to one prompt; rewards are drawn at random
(+1/-1) because the model is untrained. Everything else is the library's real path:
the old-policy pass (causal_lm_sequence_features), eq. 9-11 and eq. 12-13 + eq. 2.

    python examples/quickstart.py --m 8
"""

import argparse

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from g2rl_core.features import causal_lm_sequence_features
from g2rl_core.shaping import exploration_scores, grpo_advantages, pairwise_cosine, shape_rewards

parser = argparse.ArgumentParser()
parser.add_argument("--m", type=int, default=8, help="responses in the group")
parser.add_argument("--lam", type=float, default=1.0)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
config = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
model = Qwen3ForCausalLM(config).eval()
prompt = torch.randint(0, 256, (1, 12)).repeat(args.m, 1)
with torch.no_grad():
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                         max_new_tokens=24, min_new_tokens=24, pad_token_id=0)
response = out[:, prompt.shape[1]:]
feats = causal_lm_sequence_features(model, prompt, torch.ones_like(prompt), response, torch.ones_like(response))

phi = feats.phi.unsqueeze(0)  # one group: [1, m, d]
rewards = torch.where(torch.rand(1, args.m) > 0.5, 1.0, -1.0)
nu = exploration_scores(phi, rewards)
torch.set_printoptions(precision=3, sci_mode=False, linewidth=120)
print("Phi: shape", tuple(feats.phi.shape), "norms", feats.phi.norm(dim=-1))
print("S (Phi cosine):\n", pairwise_cosine(phi)[0])
print("rewards         ", rewards[0])
print("nu              ", nu[0])
for variant in ["equation", "centered"]:
    shaped = shape_rewards(rewards, nu, lam=args.lam, variant=variant)
    print(f"rtilde {variant:9s}", shaped[0])
    print(f"A      {variant:9s}", grpo_advantages(shaped)[0])
print("A      GRPO     ", grpo_advantages(rewards)[0])

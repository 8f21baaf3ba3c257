#!/usr/bin/env python3
"""PyTorch CPU reference for bench/vs-torch.ts: the same models, the same work, measured the same way.

Optional tool (Debian: apt-get install python3-torch); nothing in the tests or CI needs it.

  python3 bench/reference_torch.py --workload train-small --threads 1 --steps 8
  python3 bench/reference_torch.py --workload decode-stories --tokens 200

Prints one JSON line: {"workload", "threads", "tokens_per_s", "cpu_tokens_per_s", "ttft_ms"?, "params"}.
Workloads:
  train-small   GPT-2 (LayerNorm, tanh-GELU, learned positions, biases, tied head) vocab 256, ctx 64, 4 layers,
                d 128, 4 heads, batch 8: full steps (forward, backward, clip 1.0, AdamW) on random tokens.
  train-large   the same family at vocab 256, ctx 256, 6 layers, d 384, 6 heads, batch 4.
  decode-stories  llama2.c's stories260K (read from its .bin: RMSNorm, SwiGLU, RoPE, grouped-query heads),
                greedy decoding with a preallocated KV cache in eager mode, batch 1; also the time to the
                first token (prefill of a 5-token prompt and one argmax).
  decode-demo   the shipped demo model's shape (configs/pretrain.yaml: GPT-2, vocab 512, ctx 64, 4 layers,
                d 128, 4 heads), random weights, greedy decoding from a 4-token prompt to the full context.
These match bench/train.ts and llmctl's model (src/model/gpt.ts) parameter for parameter.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
STORIES = os.path.join(HERE, '..', 'test', 'fixtures', 'stories260K', 'stories260K.bin')


class GPT2(nn.Module):
    def __init__(self, vocab, ctx, n_layer, d, n_head):
        super().__init__()
        self.ctx, self.d, self.h = ctx, d, n_head
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList()
        for _ in range(n_layer):
            b = nn.Module()
            b.ln_1, b.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            b.q, b.k, b.v, b.o = (nn.Linear(d, d) for _ in range(4))
            b.up, b.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.blocks.append(b)
        self.ln_f = nn.LayerNorm(d)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        mask = torch.full((ctx, ctx), float('-inf')).triu(1)
        self.register_buffer('mask', mask, persistent=False)

    def attn(self, b, x, cache, pos0):
        B, T, d = x.shape
        hd = d // self.h
        q, k, v = (f(x).view(B, T, self.h, hd).transpose(1, 2) for f in (b.q, b.k, b.v))
        if cache is not None:
            cache[0][:, :, pos0:pos0 + T] = k
            cache[1][:, :, pos0:pos0 + T] = v
            k, v = cache[0][:, :, :pos0 + T], cache[1][:, :, :pos0 + T]
        S = k.shape[2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        if T > 1:
            att = att + self.mask[pos0:pos0 + T, :S]
        y = F.softmax(att, dim=-1) @ v
        return b.o(y.transpose(1, 2).reshape(B, T, d))

    def forward(self, idx, caches=None, pos0=0):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe.weight[pos0:pos0 + T]
        for i, b in enumerate(self.blocks):
            x = x + self.attn(b, b.ln_1(x), caches[i] if caches else None, pos0)
            x = x + b.down(F.gelu(b.up(b.ln_2(x)), approximate='tanh'))
        return self.ln_f(x) @ self.wte.weight.t()

    def new_cache(self, B):
        hd = self.d // self.h
        return [(torch.zeros(B, self.h, self.ctx, hd), torch.zeros(B, self.h, self.ctx, hd)) for _ in self.blocks]


class Llama2c(nn.Module):
    """llama2.c's model (run.c's forward), weights read from its .bin checkpoint."""

    def __init__(self, path):
        super().__init__()
        with open(path, 'rb') as f:
            dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack('7i', f.read(28))
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
        shared = vocab > 0
        vocab = abs(vocab)
        hd, kv_dim = dim // n_heads, (dim // n_heads) * n_kv
        self.dim, self.n_heads, self.n_kv, self.hd, self.seq, self.n_layers = dim, n_heads, n_kv, hd, seq, n_layers
        off = 0

        def take(*shape):
            nonlocal off
            n = math.prod(shape)
            t = data[off:off + n].view(*shape).clone()
            off += n
            return t
        self.emb = take(vocab, dim)
        self.rms_att = take(n_layers, dim)
        self.wq, self.wk, self.wv = take(n_layers, dim, dim), take(n_layers, kv_dim, dim), take(n_layers, kv_dim, dim)
        self.wo = take(n_layers, dim, dim)
        self.rms_ffn = take(n_layers, dim)
        self.w1, self.w2, self.w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
        self.rms_final = take(dim)
        off += seq * hd  # freq_cis_real, freq_cis_imag (unused: recomputed below, as run.c does)
        self.wcls = self.emb if shared else take(vocab, dim)
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(seq).float(), freqs)
        self.cos, self.sin = ang.cos(), ang.sin()
        self.params = sum(t.numel() for t in (self.emb, self.rms_att, self.wq, self.wk, self.wv, self.wo, self.rms_ffn,
                                                 self.w1, self.w2, self.w3, self.rms_final)) + (0 if shared else self.wcls.numel())

    @staticmethod
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rope(self, x, pos0):  # x [T, heads, hd], pairs (2i, 2i+1) rotated as in run.c
        T = x.shape[0]
        c, s = self.cos[pos0:pos0 + T, None, :], self.sin[pos0:pos0 + T, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)

    def new_cache(self, B=1):
        return [(torch.zeros(self.n_kv, self.seq, self.hd), torch.zeros(self.n_kv, self.seq, self.hd)) for _ in range(self.n_layers)]

    def forward(self, idx, caches, pos0):  # idx [1, T]
        T = idx.shape[1]
        rep = self.n_heads // self.n_kv
        x = self.emb[idx[0]]
        for l in range(self.n_layers):
            h = self.rms(x, self.rms_att[l])
            q = self.rope((h @ self.wq[l].t()).view(T, self.n_heads, self.hd), pos0)
            k = self.rope((h @ self.wk[l].t()).view(T, self.n_kv, self.hd), pos0)
            v = (h @ self.wv[l].t()).view(T, self.n_kv, self.hd)
            kc, vc = caches[l]
            kc[:, pos0:pos0 + T] = k.transpose(0, 1)
            vc[:, pos0:pos0 + T] = v.transpose(0, 1)
            S = pos0 + T
            # Grouped-query: the rep query heads of a kv head as rows of one matrix (no copy of the cache).
            qg = q.view(T, self.n_kv, rep, self.hd).permute(1, 2, 0, 3).reshape(self.n_kv, rep * T, self.hd)
            att = (qg @ kc[:, :S].transpose(1, 2)) / math.sqrt(self.hd)
            if T > 1:
                mask = torch.full((T, S), float('-inf')).triu(pos0 + 1)
                att = (att.view(self.n_kv, rep, T, S) + mask).view(self.n_kv, rep * T, S)
            y = F.softmax(att, dim=-1) @ vc[:, :S]
            y = y.view(self.n_kv, rep, T, self.hd).permute(2, 0, 1, 3).reshape(T, self.dim)
            x = x + y @ self.wo[l].t()
            h = self.rms(x, self.rms_ffn[l])
            x = x + (F.silu(h @ self.w1[l].t()) * (h @ self.w3[l].t())) @ self.w2[l].t()
        return (self.rms(x, self.rms_final) @ self.wcls.t())[None]


def train(args, vocab, ctx, n_layer, d, n_head, batch):
    torch.manual_seed(0)
    model = GPT2(vocab, ctx, n_layer, d, n_head)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    data = torch.randint(0, vocab, (200_000,))

    def step():
        ix = torch.randint(0, len(data) - ctx - 1, (batch,))
        x = torch.stack([data[i:i + ctx] for i in ix])
        y = torch.stack([data[i + 1:i + ctx + 1] for i in ix])
        loss = F.cross_entropy(model(x).view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(2):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = args.steps * batch * ctx
    return {'tokens_per_s': tokens / wall, 'cpu_tokens_per_s': tokens / cpu, 'params': sum(p.numel() for p in model.parameters())}


@torch.inference_mode()
def decode(model, prompt, n_tokens, ctx):
    """Greedy decoding, restarting from the prompt when the context is full; returns tok/s after the first
    token and the time to the first token (prefill + argmax)."""
    produced, wall, cpu, ttfts = 0, 0.0, 0.0, []
    while produced < n_tokens:
        caches = model.new_cache(1)
        t0 = time.perf_counter()
        logits = model(torch.tensor([prompt]), caches, 0)
        nxt = int(logits[0, -1].argmax())
        ttfts.append((time.perf_counter() - t0) * 1000)
        pos = len(prompt)
        t1, c1 = time.perf_counter(), time.process_time()
        n = 0
        while pos < ctx and produced + n < n_tokens:
            logits = model(torch.tensor([[nxt]]), caches, pos)
            nxt = int(logits[0, -1].argmax())
            pos += 1
            n += 1
        wall += time.perf_counter() - t1
        cpu += time.process_time() - c1
        produced += n
    ttfts.sort()
    return {'tokens_per_s': produced / wall, 'cpu_tokens_per_s': produced / cpu, 'ttft_ms': ttfts[len(ttfts) // 2]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--workload', required=True, choices=['train-small', 'train-large', 'decode-stories', 'decode-demo'])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--steps', type=int, default=8)
    ap.add_argument('--tokens', type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.workload == 'train-small':
        out = train(args, 256, 64, 4, 128, 4, 8)
    elif args.workload == 'train-large':
        out = train(args, 256, 256, 6, 384, 6, 4)
    elif args.workload == 'decode-stories':
        model = Llama2c(STORIES)
        decode(model, [1, 403, 407, 261, 378], 20, model.seq)  # warm-up
        out = decode(model, [1, 403, 407, 261, 378], args.tokens, model.seq)
        out['params'] = model.params
    else:
        torch.manual_seed(0)
        model = GPT2(512, 64, 4, 128, 4).eval()
        decode(model, [1, 2, 3, 4], 20, 64)
        out = decode(model, [1, 2, 3, 4], args.tokens, 64)
        out['params'] = sum(p.numel() for p in model.parameters())
    out.update({'workload': args.workload, 'threads': args.threads, 'torch': torch.__version__})
    print(json.dumps(out))


if __name__ == '__main__':
    sys.exit(main())
